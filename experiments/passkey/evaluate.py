"""Passkey accuracy by document length and passkey depth, and its plot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from memorizing_transformers_pytorch.evaluate import read_stream, segments
from memorizing_transformers_pytorch.model import MemorizingTransformer

from ..recall.evaluate import document_stream
from .task import passkey_document

__all__ = ["evaluate_passkey", "plot_passkey"]


@torch.no_grad()
def evaluate_passkey(model: MemorizingTransformer, lengths: Sequence[int], depths: Sequence[float], *, trials: int,
                     memory_size: int | None, seq_len: int, batch_size: int = 16, digits: int = 5,
                     device: str | torch.device = "cpu", seed: int = 1234, progress: bool = True) -> dict[str, Any]:
    """Exact-match passkey accuracy for each (length, depth), over ``trials`` documents each (random passkeys).

    Args:
        memory_size: kNN memory capacity per document (0 = memory off, None = the model's size).
    """
    if trials < 1:
        raise ValueError(f"passkey: trials must be >= 1, got {trials}")
    by_length: dict[str, dict[str, float]] = {}
    cells = [(length, depth) for length in lengths for depth in depths]
    for length in tqdm(lengths, disable=None if progress else True, desc="lengths", leave=False):
        rng = np.random.default_rng([seed, length])
        docs = [(depth, passkey_document(length, depth, rng, digits)) for depth in depths for _ in range(trials)]
        hits_by_depth: dict[float, list[bool]] = {depth: [] for depth in depths}
        for first in range(0, len(docs), batch_size):
            chunk = docs[first : first + batch_size]
            stream = document_stream([doc for _, doc in chunk], seq_len)  # byte i predicted at input i
            hits = torch.cat([(logits.argmax(-1) == batch.labels).cpu()
                              for batch, logits in read_stream(model, segments(stream, seq_len),
                                                               memory_size=memory_size, device=device)], dim=1)
            for row, (depth, doc) in enumerate(chunk):
                hits_by_depth[depth].append(bool(hits[row, doc.answer_start : doc.answer_start + digits].all()))
        by_length[str(length)] = {str(depth): float(np.mean(h)) for depth, h in hits_by_depth.items()}
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    return {
        "by_length": by_length,
        "accuracy_by_length": {length: float(np.mean(list(row.values()))) for length, row in by_length.items()},
        "trials": trials,
        "cells": len(cells),
        "memory_size": model.config.max_knn_memories if memory_size is None and use_memory else (memory_size or 0),
        "context": seq_len + model.config.xl_max_memories,
        "chance": 10.0 ** -digits,
    }


def plot_passkey(curves: dict[str, dict[str, Any]], path: str, *, train_length: int | None = None,
                 title: str = "Passkey retrieval") -> str:
    """Accuracy (mean over depths) against document length, one line per curve; the training length marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, result in curves.items():
        lengths = [int(n) for n in result["accuracy_by_length"]]
        ax.plot(lengths, list(result["accuracy_by_length"].values()), marker="o", label=label)
    if train_length:
        ax.axvline(train_length, color="gray", linestyle=":", label=f"longest training document ({train_length} bytes)")
    context = next(iter(curves.values()))["context"]
    ax.axvline(context, color="black", linestyle="--", label=f"local + XL context ({context} bytes)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("document length (bytes)")
    ax.set_ylabel("exact-match accuracy (mean over depths)")
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
