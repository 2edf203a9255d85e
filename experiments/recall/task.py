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
from dataclasses import dataclass

import numpy as np

from memorizing_transformers_pytorch.data import SPLITS, Source, check_split, register_source

from ..spec import parse_spec

__all__ = ["RecallTask", "RecallDocument", "recall_document", "training_document", "recall_documents",
           "KEY_SYMBOLS", "SYMBOLS"]

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
        return parse_spec(cls, "recall", spec, floats=("query_rate",))


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


def recall_documents(task: RecallTask, split: str) -> list[np.ndarray]:
    """``task.documents`` training-style token arrays for ``split``."""
    check_split(split)
    rng = np.random.default_rng([task.seed, SPLITS.index(split)])
    return [training_document(task, rng).tokens for _ in range(task.documents)]


register_source("recall", Source(documents=lambda argument, split: recall_documents(RecallTask.parse(argument), split),
                                 help="recall[:SPEC], the synthetic key -> value recall task (experiments/recall)"))
