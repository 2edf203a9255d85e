"""A long-range recall task with known answers: key -> value bindings, queried far later.

Documents are runs of statements ``KEY VALUE ;``: a key of ``key_len`` bytes
drawn from the 128 bytes 128..255, then a value of ``value_len`` bytes drawn from
the 93 printable ASCII characters other than space and ``;``, then ``;``. A statement is either a fresh binding or a
*query*: a repeat of an earlier binding, whose value is predictable only by
recalling it. (Keys come from their own byte range, without a separator, so that
even matching a key's last byte narrows the search: a gradient a small model can
start learning the lookup from. With an ``=`` between key and value, nothing
short of matching the whole key helps, and the small CPU models here never
started to learn.)

- Training documents (``recall_documents``) are ``length`` bytes long; each
  statement is, with probability ``query_rate``, a query of an earlier binding
  not yet queried, at a log-uniform distance: from a few statements up to the
  document length, inside and far outside the model's context.
- Evaluation documents (``recall_document``) fix the distance: ``bindings`` bindings,
  then fresh never-queried bindings as filler, then the ``bindings`` queries in a
  shuffled order. The query in the same slot as its binding is exactly
  ``distance`` bytes after it (a multiple of the statement width); the others are
  within ``(bindings - 1)`` statements of that. The filler bindings also sit in
  memory as distractors.

A value is recalled when the model's argmax is right at each of its bytes given
the true bytes before it, which is exactly when greedy generation after the key
writes the value. Chance is ``93 ** -value_len``.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .data import PAD_ID, SOS_ID
from .model import MemorizingTransformer

__all__ = [
    "RecallTask", "RecallDocument", "recall_document", "recall_documents", "document_stream", "evaluate_recall",
    "plot_recall",
    "wired_lookup_model", "copy_batch", "copy_warmup",
]

KEY_SYMBOLS = np.arange(128, 256, dtype=np.uint8)
SYMBOLS = np.array([c for c in range(0x21, 0x7F) if c != ord(";")], dtype=np.uint8)


@dataclass(frozen=True)
class RecallTask:
    """Parameters of the recall documents.

    Args:
        bindings: queried bindings per evaluation document.
        key_len, value_len: bytes of each key and value.
        length: bytes per training document (the longest training distance).
        query_rate: fraction of training statements that are queries.
        value_first: 1 writes bindings as ``VALUE KEY;`` ("Z31 is the code of K7") and
            queries as ``KEY VALUE;``, so the lookup matches a query's key with the
            binding's key itself rather than with the token before a value.
        min_distance: training queries are at least this many bytes after their binding
            (rounded up to whole statements); 0 = any distance. E.g. 300 with a 256-byte
            context: every training query must be answered from the kNN memory.
        documents: training documents per split.
        seed: the train / valid / test splits draw from ``[seed, split]``.
    """

    bindings: int = 8
    key_len: int = 2
    value_len: int = 8
    length: int = 2048
    query_rate: float = 0.4
    value_first: int = 0
    min_distance: int = 0
    documents: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("bindings", "key_len", "value_len", "documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"recall task: {name} must be >= 1, got {getattr(self, name)}")
        if self.length < 2 * self.width:
            raise ValueError(f"recall task: length must hold two statements ({2 * self.width} bytes), got {self.length}")
        if not 0 <= self.min_distance <= self.length // 2:
            raise ValueError(f"recall task: min_distance must be in 0..length // 2 = {self.length // 2}, "
                             f"got {self.min_distance}")
        if not 0 <= self.query_rate < 1:
            raise ValueError(f"recall task: query_rate must be in [0, 1), got {self.query_rate}")
        if self.key_len < 2:
            raise ValueError("recall task: key_len must be >= 2 so that keys are distinct")

    @property
    def width(self) -> int:
        """Bytes per statement: key, value, ``;``."""
        return self.key_len + self.value_len + 1

    @classmethod
    def parse(cls, spec: str) -> RecallTask:
        """From ``"recall"`` or ``"recall:length=2048,documents=4000,bindings=8,seed=0"`` (the field names)."""
        body = spec.removeprefix("recall").removeprefix(":")
        values: dict[str, Any] = {}
        fields = cls.__dataclass_fields__
        for part in filter(None, body.split(",")):
            name, _, text = part.partition("=")
            name = name.strip().replace("-", "_")
            if name not in fields:
                raise ValueError(f"recall spec {spec!r}: unknown key {name!r} (known: {', '.join(fields)})")
            try:
                values[name] = float(text) if name == "query_rate" else int(text)
            except ValueError:
                raise ValueError(f"recall spec {spec!r}: {part!r} is not NAME=NUMBER") from None
        return cls(**values)


@dataclass(frozen=True)
class RecallDocument:
    """One document and, per query, where its value starts and its distance from the binding."""

    tokens: np.ndarray  # uint8, without the start-of-document marker
    value_starts: np.ndarray  # offsets in ``tokens`` of the queried values
    distances: np.ndarray  # bytes from each binding's value to its query's value


class _Statements:
    """Draws distinct keys and random values, and lays out statements."""

    def __init__(self, task: RecallTask, rng: np.random.Generator) -> None:
        self.task, self.rng = task, rng
        self.used: set[bytes] = set()

    def binding(self) -> tuple[bytes, bytes]:
        t = self.task
        if len(self.used) >= len(KEY_SYMBOLS) ** t.key_len // 2:
            raise ValueError(f"recall task: a document needs more than {len(self.used)} distinct keys; "
                             f"use a longer key_len or a shorter distance/length")
        while True:
            key = KEY_SYMBOLS[self.rng.integers(len(KEY_SYMBOLS), size=t.key_len)].tobytes()
            if key not in self.used:
                self.used.add(key)
                return key, SYMBOLS[self.rng.integers(len(SYMBOLS), size=t.value_len)].tobytes()


def _document(task: RecallTask, statements: list[tuple[bytes, bytes]], queries: list[tuple[int, int]]) -> RecallDocument:
    """``queries``: (statement index of the query, statement index of its binding)."""
    is_query = np.zeros(len(statements), dtype=bool)
    is_query[[q for q, _ in queries]] = True
    flip = ~is_query if task.value_first else np.zeros_like(is_query)  # bindings "VALUE KEY;", queries "KEY VALUE;"
    text = b"".join((value + key if f else key + value) + b";" for (key, value), f in zip(statements, flip))
    starts = np.arange(len(statements)) * task.width
    value_at = np.where(flip, starts, starts + task.key_len)
    asked = np.array([q for q, _ in queries], dtype=np.int64)
    bound = np.array([b for _, b in queries], dtype=np.int64)
    return RecallDocument(np.frombuffer(text, dtype=np.uint8).copy(), value_at[asked], value_at[asked] - value_at[bound])


def recall_document(task: RecallTask, distance: int, rng: np.random.Generator) -> RecallDocument:
    """An evaluation document whose same-slot query sits ``distance`` bytes (rounded down to whole
    statements, at least ``bindings`` statements) after its binding."""
    draw = _Statements(task, rng)
    n = task.bindings
    filler = max(0, distance // task.width - n)
    bound = [draw.binding() for _ in range(n)]
    statements = bound + [draw.binding() for _ in range(filler)]
    order = rng.permutation(n)
    queries = [(len(statements) + slot, int(i)) for slot, i in enumerate(order)]
    statements += [bound[i] for i in order]
    return _document(task, statements, queries)


def training_document(task: RecallTask, rng: np.random.Generator) -> RecallDocument:
    """A ``length``-byte document of bindings and queries of earlier bindings.

    A query's distance back (in statements) is drawn log-uniformly, so that about
    as many queries fall inside the local window (where the model can first learn
    to look keys up) as in each doubling of the distance beyond it. Bindings are
    queried once, nearest-first at each drawn distance, so most queries end up
    short: with ``query_rate=0.5`` and 4-byte values, 11% of them lie beyond a 256-byte context.
    ``min_distance`` moves all of them out (the ones that no binding is old
    enough for become fresh bindings).
    """
    draw = _Statements(task, rng)
    statements: list[tuple[bytes, bytes]] = []
    unqueried: list[int] = []  # ascending statement indices of bindings not queried yet
    queries = []
    nearest = -(-task.min_distance // task.width)  # statements back, at least
    for index in range(task.length // task.width):
        if unqueried and unqueried[0] <= index - nearest and rng.random() < task.query_rate:
            target = index - int(np.exp(rng.uniform(np.log(max(1, nearest)), np.log(index))))
            at = max(0, bisect.bisect_right(unqueried, target) - 1)  # at least that far back, if any
            bound = unqueried.pop(at)
            statements.append(statements[bound])
            queries.append((index, bound))
        else:
            statements.append(draw.binding())
            unqueried.append(index)
    return _document(task, statements, queries)


def copy_batch(batch_size: int, seq_len: int, span: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Rows of random bytes, each holding a random string of ``span`` bytes and, ``span`` to ``seq_len - span``
    bytes later, its copy: ``(B, seq_len)`` tokens and a ``(B, seq_len)`` mask of the copied bytes after the
    first (the ones predictable by copying). Bytes come from the recall task's key and value alphabets."""
    if not 1 <= span <= seq_len // 2:
        raise ValueError(f"copy warm-up: span must be in 1..seq_len // 2 = {seq_len // 2}, got {span}")
    alphabet = np.concatenate((SYMBOLS, KEY_SYMBOLS))
    tokens = alphabet[rng.integers(len(alphabet), size=(batch_size, seq_len))]
    mask = np.zeros((batch_size, seq_len), dtype=bool)
    room = seq_len - 2 * span
    for row in range(batch_size):
        before = int(rng.integers(0, room + 1))
        copy = before + span + int(rng.integers(0, room - before + 1))
        tokens[row, copy : copy + span] = tokens[row, before : before + span]
        mask[row, copy + 1 : copy + span] = True
    return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask)


def copy_warmup(model: MemorizingTransformer, steps: int, *, batch_size: int = 8, seq_len: int = 128, span: int = 48,
                lr: float = 2e-3, seed: int = 0, progress: bool = True) -> list[float]:
    """Teaches ``model`` (in place) to copy by content, before it trains on the recall task.

    Each step is one segment per row from ``copy_batch``, read alone (no XL cache, no
    kNN memory), with the loss on the copied bytes only. The copy sits a random 48 to
    80 bytes after its original (``seq_len`` 128, ``span`` 48), so the model must find it
    by content: a head that moves each token's predecessor forward, and a head in the
    next layer that matches it (an "induction" circuit, the one a key lookup needs). A
    2-layer, width-128 model learns it abruptly after about 4,000 steps of 8 rows here.
    On the recall task alone, such models did not start to learn in 12,000 steps; with
    the loss on every byte (random ones included), copying did not start in 3,000.
    Returns the loss (bits per copied byte) of each step.
    """
    rng = np.random.default_rng([seed, 11])
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 100))
    device = next(model.parameters()).device
    model.train()
    losses = []
    bar = tqdm(range(steps), disable=not progress, desc="copy warm-up", unit="step")
    for _ in bar:
        tokens, mask = copy_batch(batch_size, seq_len + 1, span, rng)
        tokens, mask = tokens.to(device), mask.to(device)
        logits, _ = model(tokens[:, :-1])
        labels = tokens[:, 1:].masked_fill(~mask[:, 1:], -100)
        loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item() / math.log(2))
        if len(losses) % 50 == 0:
            bar.set_postfix(bits=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval()
    return losses


def recall_documents(task: RecallTask, split: str) -> list[np.ndarray]:
    """``task.documents`` training-style token arrays for ``split``."""
    from .data import _check_split

    _check_split(split)
    rng = np.random.default_rng([task.seed, ("train", "valid", "test").index(split)])
    return [training_document(task, rng).tokens for _ in range(task.documents)]


def document_stream(docs: Sequence[RecallDocument], seq_len: int) -> Tensor:
    """``(len(docs), S)`` token rows: the start-of-document marker, then each document (all of one length),
    padded to whole segments of ``seq_len`` plus one byte (the label of the last input). Document byte ``i``
    is stream position ``i + 1``, predicted at input position ``i``."""
    length = 1 + len(docs[0].tokens)
    padded = math.ceil(length / seq_len) * seq_len + 1
    stream = torch.full((len(docs), padded), PAD_ID, dtype=torch.long)
    stream[:, 0] = SOS_ID
    for row, doc in enumerate(docs):
        stream[row, 1:length] = torch.from_numpy(doc.tokens.astype(np.int64))
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
    model.eval()
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    results: dict[str, Any] = {}
    for distance in tqdm(distances, disable=not progress, desc="distances", leave=False):
        rng = np.random.default_rng([seed, distance])
        docs = [recall_document(task, distance, rng) for _ in range(documents)]
        measured = np.concatenate([d.distances for d in docs])
        correct, bits, queries = 0, 0.0, 0
        byte_hits = np.zeros(task.value_len)
        for first in range(0, documents, batch_size):
            chunk = docs[first : first + batch_size]
            stream = document_stream(chunk, seq_len).to(device)
            padded = stream.shape[1]
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


def wired_lookup_model(xl: int = 32, num_retrieved: int = 8) -> MemorizingTransformer:
    """A 2-layer model whose weights are set by hand to look a key up (an "induction" circuit).

    Layer 1 copies the previous and the one-before-previous token into their own
    subspaces (heads 0 and 1, by relative position bias alone). In the memorizing
    layer, head 2's query is (this token, previous token) and its key is (previous
    token, the one before), so a query at a key's last byte matches the position just
    after the same key, wherever it is: in the segment, the XL cache or the kNN
    memory. Its value is that position's token, which the output layer reads out.
    Nothing is learned: this checks that retrieval through the kNN memory works end
    to end (positions, the XL hand-over, FIFO storage, the joint softmax), and shows
    what a model that has learned the lookup gains from memory.

    With ``value_len=1`` it recalls every value at any distance the memory holds.
    Longer values are matched on two-byte contexts only (this byte, the previous one),
    which also occur in distractor bindings, so recall falls as memory fills.
    """
    w = 64  # width of each subspace: [token | previous | before previous | retrieved]
    model = MemorizingTransformer(num_tokens=256, dim=4 * w, depth=2, heads=3, dim_head=2 * w, kv_heads=1,
                                  memorizing_layers=(2,), knn_gate="joint", xl_max_memories=xl, max_knn_memories=16384,
                                  num_retrieved_memories=num_retrieved, pad_id=0, clear_memories_on_sos_token_id=2).eval()
    codes = F.normalize(torch.randn(256, w, generator=torch.Generator().manual_seed(0)), dim=-1)
    token, previous, before, retrieved = (slice(i * w, (i + 1) * w) for i in range(4))
    eye = torch.eye(w)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in [model.norm] + [m for layer in model.layers for m in (layer.attn_norm, layer.ff_norm)]:
            norm.weight.fill_(1.0)
        model.token_emb.weight[:, token] = codes
        bias = torch.full((32, 3), -50.0)
        bias[1, 0] = bias[2, 1] = 50.0  # head 0 looks 1 back, head 1 looks 2 back
        bias[:, 2] = 0.0  # head 2: by content only
        model.rel_pos.embedding.weight.copy_(bias)
        # layer norms scale a residual holding n unit codes by sqrt(4w / n); the outputs undo that
        first, second = model.layers[0].attn, model.layers[1].attn
        first.to_kv.weight[2 * w : 3 * w, token] = eye  # value = this token
        first.to_out.weight[previous, 0:w] = eye / (4 * w) ** 0.5
        first.to_out.weight[before, 2 * w : 3 * w] = eye / (4 * w) ** 0.5
        second.to_q.weight[4 * w : 5 * w, token] = eye  # head 2: (token, previous)
        second.to_q.weight[5 * w : 6 * w, previous] = eye
        second.to_kv.weight[0:w, previous] = eye  # key: (previous, before)
        second.to_kv.weight[w : 2 * w, before] = eye
        second.to_kv.weight[2 * w : 3 * w, token] = eye  # value: this token
        second.log_scale.fill_(math.log(40.0))
        second.to_out.weight[retrieved, 4 * w : 5 * w] = eye / (4 * w / 3) ** 0.5
        model.to_logits.weight[:, retrieved] = 10 * codes
    return model

