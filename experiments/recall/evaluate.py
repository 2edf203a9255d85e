"""Evaluation of the recall task: exact-match recall of each queried value, by binding-to-query distance."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from memorizing_transformers_pytorch.data import PAD_ID, SOS_ID
from memorizing_transformers_pytorch.evaluate import read_stream, segments
from memorizing_transformers_pytorch.model import MemorizingTransformer

from .task import SYMBOLS, RecallDocument, RecallTask, recall_document

__all__ = ["document_stream", "evaluate_recall", "plot_recall"]


def document_stream(docs: Sequence[RecallDocument], seq_len: int) -> Tensor:
    """``(len(docs), S)`` token rows: the start-of-document marker, then each document (anything with
    ``tokens``), padded after the longest to whole segments of ``seq_len`` plus one byte (the label of the
    last input). Document byte ``i`` is stream position ``i + 1``, predicted at input position ``i``."""
    padded = math.ceil((1 + max(len(doc.tokens) for doc in docs)) / seq_len) * seq_len + 1
    stream = torch.full((len(docs), padded), PAD_ID, dtype=torch.long)
    stream[:, 0] = SOS_ID
    for row, doc in enumerate(docs):
        stream[row, 1 : 1 + len(doc.tokens)] = torch.from_numpy(doc.tokens.astype(np.int64))
    return stream


@torch.no_grad()
def evaluate_recall(
    model: MemorizingTransformer,
    task: RecallTask,
    distances: Sequence[int],
    *,
    documents: int = 64,
    memory_size: int | None = None,
    batch_size: int = 16,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    seed: int = 1234,
    progress: bool = True,
) -> dict[str, Any]:
    """Exact-match recall and bits per value byte at each distance.

    Args:
        memory_size: kNN memory capacity per stream (0 = memory off, None = the
            model's configured size).
        documents: documents per distance (each has ``task.bindings`` queries).

    Returns:
        ``{"by_distance": {"D": {"accuracy", "bits_per_value_byte", "byte_accuracy", "queries"}}, ...}``;
        ``byte_accuracy`` is the argmax accuracy at each byte of the value, given the true bytes before it.
    """
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    results: dict[str, Any] = {}
    for distance in tqdm(distances, disable=None if progress else True, desc="distances", leave=False):
        rng = np.random.default_rng([seed, distance])
        docs = [recall_document(task, distance, rng) for _ in range(documents)]
        measured = np.concatenate([d.distances for d in docs])
        correct, bits, queries = 0, 0.0, 0
        byte_hits = np.zeros(task.value_len)
        for first in range(0, documents, batch_size):
            chunk = docs[first : first + batch_size]
            stream = document_stream(chunk, seq_len)
            log_probs, hits = [], []
            for batch, logits in read_stream(model, segments(stream, seq_len), memory_size=memory_size, device=device):
                logp = F.log_softmax(logits.float(), dim=-1)
                log_probs.append(logp.gather(-1, batch.labels.unsqueeze(-1)).squeeze(-1).cpu())
                hits.append((logits.argmax(-1) == batch.labels).cpu())
            log_prob, hit = torch.cat(log_probs, dim=1), torch.cat(hits, dim=1)
            for row, doc in enumerate(chunk):
                # document byte i is stream position i + 1, predicted at input position i
                for value_start in doc.value_starts:
                    span = slice(int(value_start), int(value_start) + task.value_len)
                    correct += bool(hit[row, span].all())
                    byte_hits += hit[row, span].numpy()
                    bits += float(-log_prob[row, span].sum()) / math.log(2)
                    queries += 1
        results[str(distance)] = {
            "accuracy": correct / queries,
            "bits_per_value_byte": bits / (queries * task.value_len),
            "byte_accuracy": (byte_hits / queries).tolist(),
            "queries": queries,
            "mean_distance": float(measured.mean()),
            "min_distance": int(measured.min()),
        }
    return {
        "by_distance": results,
        "memory_size": model.config.max_knn_memories if memory_size is None and use_memory else (memory_size or 0),
        "documents_per_distance": documents,
        "chance_accuracy": len(SYMBOLS) ** -task.value_len,
        "chance_bits_per_value_byte": math.log2(len(SYMBOLS)),
        "task": {k: getattr(task, k) for k in ("bindings", "key_len", "value_len")},
    }


def plot_recall(curves: dict[str, dict[str, Any]], path: str, *, context: int | None = None,
                title: str = "Recall of a key's value vs distance") -> str:
    """Accuracy against distance (log x), one line per labelled ``evaluate_recall`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for label, result in curves.items():
        distances = [int(d) for d in result["by_distance"]]
        accuracy = [v["accuracy"] for v in result["by_distance"].values()]
        ax.plot(distances, accuracy, marker="o", label=label)
    if context:
        ax.axvline(context, color="gray", linestyle=":", label=f"local + XL context ({context})")
    ax.set_xscale("log", base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("distance from binding to query (bytes)")
    ax.set_ylabel("exact-match recall of the value")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # outside: never over a line
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


