"""Byte-level document sources and document-stream batching.

Tokens are bytes (0..255). Two byte values are reserved and removed from document
text: ``PAD_ID`` (0) marks padding and ``SOS_ID`` (2, ASCII "start of text") starts
each document, so the model clears that row's memories when it sees it.

A ``DocumentStream`` gives each batch row its own stream of documents: row ``b``
reads one document through consecutive segments, then the next, each prefixed by
``SOS_ID``. Its position is plain data (``state_dict``) so training can resume.

Sources are named in a registry (``SOURCES``): ``stdlib``, ``enwik8:PATH``, and a folder or glob of text
files. Other code (e.g. ``experiments/``) adds its own with ``register_source``: either documents, which
``DocumentStream`` batches, or a ``BatchStream`` of its own (for tasks whose labels are not simply the next
byte of every position).
"""

from __future__ import annotations

import gzip
import sysconfig
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "PAD_ID", "SOS_ID", "IGNORE_INDEX", "SPLITS", "Batch", "BatchStream", "DocumentStream", "Source", "SOURCES",
    "register_source", "load_documents", "open_stream", "stdlib_documents", "folder_documents", "enwik8_documents",
]

PAD_ID = 0
SOS_ID = 2
IGNORE_INDEX = -100
SPLITS = ("train", "valid", "test")
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
ENWIK8_DOCUMENT_BYTES = 1 << 20


def _clean(data: bytes) -> np.ndarray:
    """Bytes as uint8 tokens, with the reserved PAD/SOS bytes replaced by a space."""
    tokens = np.frombuffer(data, dtype=np.uint8).copy()
    tokens[(tokens == PAD_ID) | (tokens == SOS_ID)] = ord(" ")
    return tokens


def _split_of(name: str) -> str:
    """Deterministic 90 / 5 / 5 split by file name (stable across machines and runs)."""
    bucket = zlib.crc32(name.encode()) % 100
    return "train" if bucket < 90 else "valid" if bucket < 95 else "test"


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def stdlib_documents(split: str) -> list[np.ndarray]:
    """The running Python's standard-library ``.py`` files, one document per file."""
    check_split(split)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    if not files:
        raise FileNotFoundError(f"no standard-library .py files found under {root}")
    return [_clean(p.read_bytes()) for p in files if _split_of(p.relative_to(root).as_posix()) == split]


def folder_documents(pattern: str | Path, split: str) -> list[np.ndarray]:
    """Text files under a folder (recursively) or matching a glob, one document per file."""
    check_split(split)
    path = Path(pattern)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        root = path
    else:
        root = Path(path.anchor) if path.is_absolute() else Path(".")
        files = sorted(p for p in root.glob(str(path.relative_to(root))) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files found at {pattern}")
    documents = []
    for file in files:
        if _split_of(file.relative_to(root).as_posix()) != split:
            continue
        try:
            data = file.read_bytes()
        except OSError as error:
            raise OSError(f"cannot read {file}: {error}") from None
        if data:
            documents.append(_clean(data))
    return documents


def enwik8_documents(path: str | Path, split: str) -> list[np.ndarray]:
    """An enwik8-style file (raw or ``.gz``) split 90M / 5M / 5M bytes.

    enwik8 has no document markers, so each split is cut into consecutive 1 MiB
    pieces; each piece is one document read in order by one row.
    """
    check_split(split)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"enwik8 file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as file:
        data = file.read()
    if not data:
        raise ValueError(f"enwik8 file is empty: {path}")
    train, valid, _ = ENWIK8_SPLIT
    if len(data) < train + valid:  # smaller files keep the same proportions
        train, valid = int(len(data) * 0.9), int(len(data) * 0.05)
    start, end = {"train": (0, train), "valid": (train, train + valid), "test": (train + valid, len(data))}[split]
    tokens = _clean(data[start:end])
    return [tokens[i : i + ENWIK8_DOCUMENT_BYTES] for i in range(0, len(tokens), ENWIK8_DOCUMENT_BYTES)]


@dataclass
class Batch:
    """One segment per row: ``tokens`` and ``labels`` are ``(B, seq_len)``; labels are the next tokens, or
    ``IGNORE_INDEX`` where nothing is scored. ``new_streams``: the rows do not continue the previous batch's
    documents, so a reader must start with empty memories."""

    tokens: Tensor
    labels: Tensor
    new_streams: bool = False

    @property
    def num_predicted(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())


class BatchStream(Protocol):
    """What training reads: batches, and a position that checkpoints can save and restore."""

    documents_started: int

    def next_batch(self) -> Batch: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Source:
    """A named data source. ``documents(argument, split)`` returns token arrays, one per document; a source
    that makes its own batches gives ``stream(argument, split, batch_size=, seq_len=, seed=)`` instead."""

    documents: Callable[[str, str], list[np.ndarray]] | None = None
    stream: Callable[..., BatchStream] | None = None
    help: str = ""


SOURCES: dict[str, Source] = {
    "stdlib": Source(documents=lambda argument, split: stdlib_documents(split),
                     help="this Python's standard-library .py files, one document per file"),
    "enwik8": Source(documents=enwik8_documents, help="enwik8:PATH, an enwik8-style file (raw or .gz)"),
}


def register_source(name: str, source: Source) -> None:
    """Adds a source that ``--data NAME[:ARGUMENT]`` selects.

    Raises:
        ValueError: a name already taken, or a source with neither documents nor a stream.
    """
    if name in SOURCES and SOURCES[name] != source:
        raise ValueError(f"data source {name!r} is already registered")
    if (source.documents is None) == (source.stream is None):
        raise ValueError("a source gives documents or a stream, exactly one of them")
    SOURCES[name] = source


def _lookup(source: str) -> tuple[Source | None, str]:
    """The registered source ``NAME[:ARGUMENT]`` names and its argument; (None, source) for a folder or glob."""
    name, _, argument = source.partition(":")
    return (SOURCES[name], argument) if name in SOURCES else (None, source)


def load_documents(source: str, split: str) -> list[np.ndarray]:
    """The non-empty documents of a source's split: a registered ``NAME[:ARGUMENT]``, or a folder / glob of text files.

    Raises:
        ValueError: a source that makes batches rather than documents, or no non-empty document.
        FileNotFoundError: a missing file or folder.
    """
    check_split(split)
    registered, argument = _lookup(source)
    if registered is None:
        documents = folder_documents(argument, split)
    elif registered.documents is None:
        raise ValueError(f"data source {source!r} makes its own batches; it has no documents to evaluate on")
    else:
        documents = registered.documents(argument, split)
    documents = [d for d in documents if len(d)]
    if not documents:
        raise ValueError(f"data source {source!r} has no non-empty documents in its {split!r} split")
    return documents


def open_stream(source: str, split: str, *, batch_size: int, seq_len: int, repeat: bool = True,
                seed: int = 0) -> BatchStream:
    """The batches of a source: its own stream, or a ``DocumentStream`` over its documents."""
    registered, argument = _lookup(source)
    if registered is not None and registered.stream is not None:
        check_split(split)
        return registered.stream(argument, split, batch_size=batch_size, seq_len=seq_len, seed=seed)
    return DocumentStream(load_documents(source, split), batch_size=batch_size, seq_len=seq_len, repeat=repeat,
                          seed=seed)


class DocumentStream:
    """Feeds each batch row its own sequence of whole documents, segment by segment.

    Documents are handed out in order from a queue shared by the rows: a row that
    finishes its document takes the next one. With ``repeat=True`` the queue is
    reshuffled each epoch (training); otherwise each document is read exactly
    once and finished rows are padded (evaluation), until ``exhausted``.

    Args:
        documents: token arrays, one per document.
        batch_size: number of rows B.
        seq_len: tokens per segment.
        repeat: loop forever over reshuffled epochs.
        seed: shuffling seed; with ``repeat=False`` the order is kept as given.
    """

    def __init__(self, documents: Sequence[np.ndarray], *, batch_size: int, seq_len: int,
                 repeat: bool, seed: int = 0) -> None:
        if not documents:
            raise ValueError("DocumentStream needs at least one document")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        self.documents = documents
        self.batch_size, self.seq_len = batch_size, seq_len
        self.repeat, self.seed = repeat, seed
        self.epoch = 0
        self.cursor = 0  # next position in this epoch's order
        self.order = self._order(0)
        # Per row: tokens read from documents but not yet emitted as inputs.
        self.pending: list[np.ndarray] = [np.zeros(0, dtype=np.int64) for _ in range(batch_size)]
        self.documents_started = 0

    def _order(self, epoch: int) -> np.ndarray:
        if not self.repeat:
            return np.arange(len(self.documents))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.documents))

    def _next_document(self) -> np.ndarray | None:
        if self.cursor == len(self.order):
            if not self.repeat:
                return None
            self.epoch += 1
            self.order, self.cursor = self._order(self.epoch), 0
        document = self.documents[self.order[self.cursor]]
        self.cursor += 1
        self.documents_started += 1
        return np.concatenate(([SOS_ID], document)).astype(np.int64)

    @property
    def exhausted(self) -> bool:
        """No more real tokens to predict (only with ``repeat=False``)."""
        return not self.repeat and self.cursor == len(self.order) and all(len(p) <= 1 for p in self.pending)

    def __iter__(self) -> Iterator[Batch]:
        while not self.exhausted:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        n = self.seq_len
        tokens = np.full((self.batch_size, n), PAD_ID, dtype=np.int64)
        labels = np.full((self.batch_size, n), IGNORE_INDEX, dtype=np.int64)
        for row in range(self.batch_size):
            pieces = [self.pending[row]]
            have = len(pieces[0])
            while have < n + 1:  # one extra token: the label of the last input
                document = self._next_document()
                if document is None:
                    break
                pieces.append(document)
                have += len(document)
            stream = np.concatenate(pieces)
            take = min(n, len(stream))
            tokens[row, :take] = stream[:take]
            targets = stream[1 : n + 1]
            labels[row, : len(targets)] = targets
            self.pending[row] = stream[n:] if len(stream) > n else np.zeros(0, dtype=np.int64)
        return Batch(torch.from_numpy(tokens), torch.from_numpy(labels))

    def state_dict(self) -> dict:
        """Position in the data as plain JSON-able values."""
        return {
            "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
            "documents_started": self.documents_started,
            "pending": [p.tolist() for p in self.pending],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["pending"]) != self.batch_size:
            raise ValueError(
                f"data state has {len(state['pending'])} rows but this stream has batch size {self.batch_size}"
            )
        self.seed, self.epoch, self.cursor = state["seed"], state["epoch"], state["cursor"]
        self.documents_started = state["documents_started"]
        self.order = self._order(self.epoch)
        self.pending = [np.asarray(p, dtype=np.int64) for p in state["pending"]]
