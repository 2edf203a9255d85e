"""A long-range recall task with known answers: key -> value bindings stated early, queried later.

A document is ``SOS``, then ``bindings`` statements such as ``K7QX=Z31P;``, then
``gap`` bytes of filler (random lowercase words), then the same keys again in a
shuffled order, each followed by its value::

    K7QX=Z31P;B0LM=4HTA;...  qzv kw hhe ...  B0LM=4HTA;K7QX=Z31P;...

Keys and values are drawn from ``A-Z0-9`` (36 symbols) and the filler from
``a-z`` and spaces, so a value is predictable only by recalling its binding. The
*distance* of a query is the number of bytes from the binding's value to the
query's value; ``distance=d`` sets ``gap = d - bindings * binding_bytes``, so the
query in the same slot as its binding is exactly ``d`` bytes away and the others
are within ``(bindings - 1) * binding_bytes`` of it.

A value is recalled when the model's argmax is right at each of its bytes given
the true bytes before it, which is exactly when greedy generation after ``KEY=``
writes the value. Chance is ``36 ** -value_len``.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import PAD_ID, SOS_ID
from .model import MemorizingTransformer

__all__ = ["RecallTask", "recall_document", "recall_documents", "evaluate_recall", "plot_recall"]

SYMBOLS = np.frombuffer((string.ascii_uppercase + string.digits).encode(), dtype=np.uint8)
FILLER = np.frombuffer((string.ascii_lowercase + "    ").encode(), dtype=np.uint8)  # ~1 space per 7 letters


@dataclass(frozen=True)
class RecallTask:
    """Parameters of the recall documents.

    Args:
        bindings: key -> value statements per document (each queried once).
        key_len, value_len: bytes of each key and value.
        min_distance, max_distance: binding-to-query distance in bytes, drawn
            uniformly per document (training) or fixed (``min == max``).
        documents: how many documents a split holds.
        seed: the train / valid / test splits use ``seed``, ``seed + 1``, ``seed + 2``.
    """

    bindings: int = 8
    key_len: int = 4
    value_len: int = 4
    min_distance: int = 80
    max_distance: int = 2048
    documents: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bindings", "key_len", "value_len", "documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"recall task: {name} must be >= 1, got {getattr(self, name)}")
        if self.min_distance < self.bindings * self.binding_bytes:
            raise ValueError(f"recall task: min_distance must be >= bindings * (key_len + value_len + 2) = "
                             f"{self.bindings * self.binding_bytes}, got {self.min_distance}")
        if self.max_distance < self.min_distance:
            raise ValueError(f"recall task: max_distance ({self.max_distance}) < min_distance ({self.min_distance})")
        if len(SYMBOLS) ** self.key_len < 4 * self.bindings:
            raise ValueError("recall task: key_len is too short for distinct keys")

    @property
    def binding_bytes(self) -> int:
        return self.key_len + self.value_len + 2  # "KEY=VALUE;"

    @classmethod
    def parse(cls, spec: str) -> RecallTask:
        """From ``"recall"`` or ``"recall:bindings=8,distance=80-2048,documents=4000,seed=0"``.

        ``distance`` is ``MIN-MAX`` or one number; the other keys are the field names.
        """
        body = spec.removeprefix("recall").removeprefix(":")
        values: dict[str, int] = {}
        for part in filter(None, body.split(",")):
            name, _, text = part.partition("=")
            name = name.strip().replace("-", "_")
            try:
                if name == "distance":
                    low, _, high = text.partition("-")
                    values["min_distance"], values["max_distance"] = int(low), int(high or low)
                elif name in {f for f in cls.__dataclass_fields__ if f not in ("min_distance", "max_distance")}:
                    values[name] = int(text)
                else:
                    raise KeyError(name)
            except KeyError:
                raise ValueError(f"recall spec {spec!r}: unknown key {name!r} (use bindings, key_len, value_len, "
                                 f"distance, documents, seed)") from None
            except ValueError:
                raise ValueError(f"recall spec {spec!r}: {part!r} is not NAME=INT (distance=MIN-MAX)") from None
        return cls(**values)


@dataclass(frozen=True)
class RecallDocument:
    """One document and, per query, where its value starts and its distance from the binding."""

    tokens: np.ndarray  # uint8, without the start-of-document marker
    value_starts: np.ndarray  # (bindings,) offsets in ``tokens`` of the queried values
    distances: np.ndarray  # (bindings,) bytes from the binding's value to the query's value


def recall_document(task: RecallTask, distance: int, rng: np.random.Generator) -> RecallDocument:
    """One document whose queries sit ``distance`` bytes (same slot) after their bindings."""
    n, width = task.bindings, task.binding_bytes
    keys: set[bytes] = set()
    while len(keys) < n:
        keys.add(SYMBOLS[rng.integers(len(SYMBOLS), size=task.key_len)].tobytes())
    key_list = sorted(keys)
    rng.shuffle(key_list)
    values = [SYMBOLS[rng.integers(len(SYMBOLS), size=task.value_len)].tobytes() for _ in range(n)]
    statements = [k + b"=" + v + b";" for k, v in zip(key_list, values)]
    gap = distance - n * width
    filler = FILLER[rng.integers(len(FILLER), size=gap)].tobytes()
    order = rng.permutation(n)
    text = b"".join(statements) + filler + b"".join(statements[i] for i in order)
    value_offset = task.key_len + 1
    bound_at = np.arange(n) * width + value_offset  # where binding i's value starts
    query_start = n * width + gap
    value_starts = query_start + np.arange(n) * width + value_offset
    distances = value_starts - bound_at[order]
    return RecallDocument(np.frombuffer(text, dtype=np.uint8).copy(), value_starts, distances)


def recall_documents(task: RecallTask, split: str) -> list[np.ndarray]:
    """``task.documents`` token arrays for ``split``, distances uniform in the task's range."""
    from .data import _check_split

    _check_split(split)
    rng = np.random.default_rng([task.seed, ("train", "valid", "test").index(split)])
    distances = rng.integers(task.min_distance, task.max_distance + 1, size=task.documents)
    return [recall_document(task, int(d), rng).tokens for d in distances]


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
        ``{"by_distance": {"D": {"accuracy", "bits_per_value_byte", "queries"}}, ...}``.
    """
    model.eval()
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    results: dict[str, Any] = {}
    for distance in tqdm(distances, disable=not progress, desc="distances", leave=False):
        rng = np.random.default_rng([seed, distance])
        docs = [recall_document(task, distance, rng) for _ in range(documents)]
        correct, bits, queries = 0, 0.0, 0
        for first in range(0, documents, batch_size):
            chunk = docs[first : first + batch_size]
            length = 1 + len(chunk[0].tokens)
            padded = math.ceil(length / seq_len) * seq_len + 1  # + 1: the label of the last input
            stream = torch.full((len(chunk), padded), PAD_ID, dtype=torch.long)
            stream[:, 0] = SOS_ID
            for row, doc in enumerate(chunk):
                stream[row, 1:length] = torch.from_numpy(doc.tokens.astype(np.int64))
            stream = stream.to(device)
            knn = model.create_knn_memories(batch_size=len(chunk), max_memories=memory_size) if use_memory else None
            xl = None
            log_probs, hits = [], []
            for start in range(0, padded - 1, seq_len):
                logits, xl = model(stream[:, start : start + seq_len], knn_memories=knn, xl_memories=xl)
                target = stream[:, start + 1 : start + seq_len + 1]
                logp = F.log_softmax(logits.float(), dim=-1)
                log_probs.append(logp.gather(-1, target.unsqueeze(-1)).squeeze(-1).cpu())
                hits.append((logits.argmax(-1) == target).cpu())
            log_prob, hit = torch.cat(log_probs, dim=1), torch.cat(hits, dim=1)
            for row, doc in enumerate(chunk):
                # document byte i is stream position i + 1, predicted at input position i
                for value_start in doc.value_starts:
                    span = slice(int(value_start), int(value_start) + task.value_len)
                    correct += bool(hit[row, span].all())
                    bits += float(-log_prob[row, span].sum()) / math.log(2)
                    queries += 1
        results[str(distance)] = {
            "accuracy": correct / queries,
            "bits_per_value_byte": bits / (queries * task.value_len),
            "queries": queries,
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

    fig, ax = plt.subplots(figsize=(6.5, 4))
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
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

