"""Document sources and document-stream batching.

Documents are arrays of token ids. Text sources give bytes (uint8, 0..255): two byte values are reserved and
removed from the text, ``PAD_ID`` (0) marks padding and ``SOS_ID`` (2, ASCII "start of text") starts each
document, so the model clears that row's memories when it sees it. Read with a tokenizer (``tokenizer.py``),
the same text becomes token ids (tokenized once and cached, ``shards.tokenize_cached``) and the tokenizer's
own padding and document-start ids take these places; token shards (``shards:DIR``) hold ids already.

A ``DocumentStream`` gives each batch row its own stream of documents: row ``b`` reads one document through
consecutive segments, then the next, each prefixed by the document-start id. Its position is plain data of a
fixed size (``state_dict``: per row, a document and an offset in it) so training can resume.
``PrefetchedStream`` reads any stream's batches ahead in a background thread.

Sources are named in a registry (``SOURCES``): ``stdlib``, ``enwik8:PATH``, ``jsonl:PATH[#FIELD]``,
``parquet:PATH[#FIELD]``, ``hf:DIR[#FIELD]`` (a dataset saved by ``datasets``), ``shards:DIR`` (token shards
written by ``prepare_shards``), and a folder or glob of text files. Other code (e.g. ``experiments/``) adds its
own with ``register_source``: either documents, which ``DocumentStream`` batches, or a ``BatchStream`` of its
own (for tasks whose labels are not simply the next byte of every position).
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import queue
import sys
import sysconfig
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from .shards import ShardDocuments, shard_tokenizer, tokenize_cached, tokenize_documents, write_shards
from .tokenizer import (
    BYTE_PAD_ID,
    BYTE_SOS_ID,
    BYTES,
    HuggingFaceTokenizer,
    Tokenizer,
    byte_tokens,
    check_same_tokenizer,
    load_tokenizer,
)

__all__ = [
    "PAD_ID", "SOS_ID", "IGNORE_INDEX", "SPLITS", "Batch", "BatchStream", "DocumentStream", "PrefetchedStream", "Source",
    "SOURCES", "register_source", "load_documents", "EmptySplitError", "open_stream", "source_tokenizer", "prepare_shards",
    "stdlib_documents", "folder_documents", "enwik8_documents", "record_documents",
]

PAD_ID = BYTE_PAD_ID
SOS_ID = BYTE_SOS_ID
IGNORE_INDEX = -100
SPLITS = ("train", "valid", "test")
ENWIK8_SPLIT = (90_000_000, 5_000_000, 5_000_000)
ENWIK8_DOCUMENT_BYTES = 1 << 20
RECORD_SUFFIXES = {"jsonl": (".jsonl", ".json", ".jsonl.gz", ".json.gz"), "parquet": (".parquet",)}
DEFAULT_FIELD = "text"

_clean = byte_tokens  # bytes as uint8 tokens, the reserved PAD/SOS bytes replaced by a space


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


def _files(pattern: str | Path, suffixes: Sequence[str] = ()) -> tuple[Path, list[Path]]:
    """The files under a folder (recursively; only those ending in ``suffixes`` if given) or matching a glob
    (or naming one file), with the folder their names are taken relative to.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(pattern)
    if path.is_dir():
        root = path
        files = sorted(p for p in path.rglob("*") if p.is_file() and (not suffixes or p.name.endswith(tuple(suffixes))))
    else:
        root = Path(path.anchor) if path.is_absolute() else Path(".")
        files = sorted(p for p in root.glob(str(path.relative_to(root))) if p.is_file())
    if not files:
        raise FileNotFoundError(f"no files found at {pattern}" + (f" (ending in {', '.join(suffixes)})" if suffixes else ""))
    return root, files


def folder_documents(pattern: str | Path, split: str) -> list[np.ndarray]:
    """Text files under a folder (recursively) or matching a glob, one document per file, in the files' split
    (``_split_of``: 90 / 5 / 5 by a hash of each path). Binary files (a NUL byte in their first 8 KB) are
    skipped, and their number is printed to stderr."""
    check_split(split)
    root, files = _files(pattern)
    documents, binary = [], 0
    for file in files:
        if _split_of(file.relative_to(root).as_posix()) != split:
            continue
        try:
            data = file.read_bytes()
        except OSError as error:
            raise OSError(f"cannot read {file}: {error}") from None
        if b"\0" in data[:8192]:
            binary += 1
        elif data:
            documents.append(_clean(data))
    if binary:
        print(f"{pattern}: skipped {binary} binary file(s) of the {split!r} split (a NUL byte in the first 8 KB)",
              file=sys.stderr)
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


# ----------------------------------------------------------------------------- records: JSONL, Parquet, datasets
def _parse_field(argument: str, kind: str) -> tuple[str, str]:
    """``PATH[#FIELD]`` -> (PATH, FIELD); the field defaults to ``text``."""
    path, _, field = argument.partition("#")
    if not path:
        raise ValueError(f"{kind} source: expected {kind}:PATH[#FIELD], got {kind}:{argument}")
    return path, field or DEFAULT_FIELD


def _record_text(value: Any, field: str, where: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must hold text, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _jsonl_texts(file: Path, field: str) -> Iterator[str]:
    """The ``field`` of each record of a JSON-lines file (plain or ``.gz``), blank lines skipped."""
    opener = gzip.open if file.suffix == ".gz" else open
    with opener(file, "rt", encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{file} line {number} is not JSON: {error}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{file} line {number}: expected a JSON object per line, got {type(record).__name__}")
            if field not in record:
                raise ValueError(f"{file} line {number} has no field {field!r} (its fields: {', '.join(map(repr, record))}); "
                                 f"name the text field with jsonl:PATH#FIELD")
            yield _record_text(record[field], field, f"{file} line {number}")


def _parquet_texts(file: Path, field: str) -> Iterator[str]:
    """The ``field`` column of a Parquet file, read a row group at a time."""
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file)
    except Exception as error:  # pyarrow's own error types
        raise ValueError(f"{file} is not a Parquet file: {error}") from None
    if field not in table.schema_arrow.names:
        raise ValueError(f"{file} has no column {field!r} (its columns: {', '.join(map(repr, table.schema_arrow.names))}); "
                         f"name the text column with parquet:PATH#FIELD")
    row = 0
    for batch in table.iter_batches(columns=[field]):
        for value in batch.column(0).to_pylist():
            yield _record_text(value, field, f"{file} row {row}")
            row += 1


def record_documents(kind: str, argument: str, split: str) -> list[np.ndarray]:
    """One document per record of JSON-lines or Parquet files: ``PATH[#FIELD]``, where PATH is a file, a folder
    (its ``.jsonl``/``.json``/``.jsonl.gz`` or ``.parquet`` files, recursively) or a glob, and FIELD the field
    holding the text (``text`` by default). Records are split 90 / 5 / 5 by file name and record number.

    Raises:
        FileNotFoundError: no files. ValueError: a record without the field, a line that is not JSON. TypeError: a
        field that is not text.
    """
    check_split(split)
    pattern, field = _parse_field(argument, kind)
    root, files = _files(pattern, RECORD_SUFFIXES[kind])
    read = _jsonl_texts if kind == "jsonl" else _parquet_texts
    documents = []
    for file in files:
        name = file.name if Path(pattern).is_file() else file.relative_to(root).as_posix()
        for number, text in enumerate(read(file, field)):
            if _split_of(f"{name}:{number}") == split and text:
                documents.append(_clean(text.encode("utf-8")))
    return documents


HF_SPLITS = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",)}


def saved_dataset_documents(argument: str, split: str) -> list[np.ndarray]:
    """One document per record of a dataset saved by Hugging Face ``datasets`` (``save_to_disk``), read offline:
    ``DIR[#FIELD]``. A ``DatasetDict`` gives its own train / validation / test splits; a single ``Dataset`` is
    split 90 / 5 / 5 by record number.

    Raises:
        FileNotFoundError: no saved dataset there. ValueError: no such split, or no such column.
    """
    check_split(split)
    path, field = _parse_field(argument, "hf")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"no saved dataset at {path} (a folder written by datasets' save_to_disk)")
    from datasets import DatasetDict, load_from_disk

    dataset = load_from_disk(path)
    if isinstance(dataset, DatasetDict):
        names = [name for name in HF_SPLITS[split] if name in dataset]
        if not names:
            raise ValueError(f"the dataset at {path} has no {split!r} split (named {' or '.join(HF_SPLITS[split])}); "
                             f"it has {', '.join(dataset)}")
        dataset, keep = dataset[names[0]], None
    else:
        keep = split
    if field not in dataset.column_names:
        raise ValueError(f"the dataset at {path} has no column {field!r} (its columns: {', '.join(dataset.column_names)}); "
                         f"name the text column with hf:DIR#FIELD")
    documents = []
    for number, value in enumerate(dataset[field]):
        text = _record_text(value, field, f"{path} record {number}")
        if text and (keep is None or _split_of(str(number)) == keep):
            documents.append(_clean(text.encode("utf-8")))
    return documents


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
    that makes its own batches gives ``stream(argument, split, batch_size=, seq_len=, seed=)`` instead. A source
    of token ids (not bytes) names the tokenizer they were made with: ``tokenizer(argument)``."""

    documents: Callable[[str, str], Sequence[np.ndarray]] | None = None
    stream: Callable[..., BatchStream] | None = None
    help: str = ""
    tokenizer: Callable[[str], Tokenizer] | None = None


SOURCES: dict[str, Source] = {
    "stdlib": Source(documents=lambda argument, split: stdlib_documents(split),
                     help="this Python's standard-library .py files, one document per file"),
    "enwik8": Source(documents=enwik8_documents, help="enwik8:PATH, an enwik8-style file (raw or .gz)"),
    "jsonl": Source(documents=lambda argument, split: record_documents("jsonl", argument, split),
                    help="jsonl:PATH[#FIELD], JSON-lines files (a file, folder or glob), one document per record's FIELD (text)"),
    "parquet": Source(documents=lambda argument, split: record_documents("parquet", argument, split),
                      help="parquet:PATH[#FIELD], Parquet files, one document per row's FIELD (text)"),
    "hf": Source(documents=saved_dataset_documents,
                 help="hf:DIR[#FIELD], a Hugging Face dataset saved with save_to_disk, one document per record's FIELD (text)"),
    "shards": Source(documents=lambda argument, split: ShardDocuments(argument, split), tokenizer=shard_tokenizer,
                     help="shards:DIR, token shards written by `memorizing-transformers prepare` (with their tokenizer)"),
}
# higher layers add their own sources with register_source when the package loads: "copy" (copy_warmup.py) and
# "longbench" (longbench/tasks.py)


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


def source_tokenizer(source: str, tokenizer: str | Path | None = None) -> Tokenizer:
    """The tokenizer to read ``source`` with: the one at ``tokenizer`` (a ``tokenizer.json`` or a folder holding
    one), else the one a source of token ids was made with, else bytes.

    Raises:
        ValueError: ``tokenizer`` is not the one a source of token ids was made with.
        FileNotFoundError: no tokenizer at that path.
    """
    registered, argument = _lookup(source)
    made_with = registered.tokenizer(argument) if registered is not None and registered.tokenizer is not None else None
    if not tokenizer:
        return made_with or BYTES
    given = load_tokenizer(tokenizer)
    if made_with is not None:
        check_same_tokenizer(given, made_with, f"--tokenizer {tokenizer} with data {source!r}")
    return given


class EmptySplitError(ValueError):
    """A split of a data source holds no non-empty document (a small folder may have none in valid or test)."""


def load_documents(source: str, split: str, tokenizer: Tokenizer | None = None, *, progress: bool = True) -> Sequence[np.ndarray]:
    """The non-empty documents of a source's split: a registered ``NAME[:ARGUMENT]``, or a folder / glob of text
    files; as bytes, or as the ids of ``tokenizer`` (the text tokenized once, then read from the cache).

    ``tokenizer=None`` reads the source as it is: text as bytes, token shards as their ids.

    Raises:
        ValueError: a source that makes batches rather than documents; no non-empty document (``EmptySplitError``);
            token ids made with another tokenizer.
        FileNotFoundError: a missing file or folder.
    """
    if split == "all":  # every split, in order: train, valid, test
        parts = []
        for part in SPLITS:
            try:
                parts.extend(load_documents(source, part, tokenizer, progress=progress))
            except EmptySplitError:
                pass
        if not parts:
            raise ValueError(f"data source {source!r} has no non-empty documents")
        return parts
    check_split(split)
    registered, argument = _lookup(source)
    if registered is None:
        documents: Sequence[np.ndarray] = folder_documents(argument, split)
    elif registered.documents is None:
        raise ValueError(f"data source {source!r} makes its own batches; it has no documents to read")
    else:
        documents = registered.documents(argument, split)
    if registered is not None and registered.tokenizer is not None:  # token ids already
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, registered.tokenizer(argument), f"data {source!r}")
    elif isinstance(tokenizer, HuggingFaceTokenizer):
        documents = [d for d in documents if len(d)]
        if documents:
            documents = tokenize_cached(documents, tokenizer, split=split, source=source, progress=progress)
    if not isinstance(documents, ShardDocuments):  # shards hold no empty document
        documents = [d for d in documents if len(d)]
    if not documents:
        hint = ""
        if registered is None:
            hint = (" (a folder's files are split by a hash of their paths: about 90% train, 5% valid, 5% test, so "
                    "a small folder may have none in a split; evaluate it all with --split all)")
        raise EmptySplitError(f"data source {source!r} has no non-empty documents in its {split!r} split{hint}")
    return documents


def open_stream(source: str, split: str, *, batch_size: int, seq_len: int, repeat: bool = True,
                seed: int = 0, tokenizer: Tokenizer | None = None) -> BatchStream:
    """The batches of a source: its own stream, or a ``DocumentStream`` over its documents read with
    ``tokenizer`` (bytes by default; see ``load_documents``).

    Raises:
        ValueError: a tokenizer other than bytes for a source that makes its own (byte) batches.
    """
    registered, argument = _lookup(source)
    if registered is not None and registered.stream is not None:
        check_split(split)
        if tokenizer is not None and tokenizer is not BYTES:
            raise ValueError(f"data source {source!r} makes its own byte batches; it takes no tokenizer")
        return registered.stream(argument, split, batch_size=batch_size, seq_len=seq_len, seed=seed)
    if tokenizer is None:
        tokenizer = source_tokenizer(source)
    return DocumentStream(load_documents(source, split, tokenizer), batch_size=batch_size, seq_len=seq_len,
                          repeat=repeat, seed=seed, sos_id=tokenizer.sos_id, pad_id=tokenizer.pad_id)


def prepare_shards(source: str, out: str | Path, tokenizer: HuggingFaceTokenizer, *, replace: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Tokenizes every split of a text source into a shard folder (``shards:OUT`` reads it); returns its meta.

    Raises:
        ValueError: a source of token ids already, or with no non-empty document in its train split (an empty
            valid or test split is written empty, with a warning).
        FileExistsError: ``out`` exists (and is not a shard folder to ``replace``).
    """
    registered, _ = _lookup(source)
    if registered is not None and registered.tokenizer is not None:
        raise ValueError(f"data source {source!r} holds token ids already")

    def splits() -> Iterator[tuple[str, Iterator[np.ndarray]]]:
        for split in SPLITS:
            try:
                documents = load_documents(source, split)
            except EmptySplitError:  # a small folder may have no file in valid or test: write that split empty
                if split == "train":
                    raise
                print(f"warning: {source!r} has no document in its {split!r} split; it is written empty (reading it "
                      f"is an error)", file=sys.stderr)
                documents = []
            yield split, tokenize_documents(documents, tokenizer, progress=progress, description=f"tokenizing {split}")

    return write_shards(out, splits(), tokenizer, source=source, replace=replace)


class DocumentStream:
    """Feeds each batch row its own sequence of whole documents, segment by segment.

    Documents are handed out in order from a queue shared by the rows: a row that
    finishes its document takes the next one. With ``repeat=True`` the queue is
    reshuffled each epoch (training); otherwise each document is read exactly
    once and finished rows are padded (evaluation), until ``exhausted``.

    A row reads its documents one after another, each prefixed by the document-start id; a segment is the
    row's next ``seq_len`` tokens, and its labels the ``seq_len`` tokens after the first. A row's position is
    the document it reads and the offset of its next token there (0: the document-start id, ``i``: the
    document's token ``i - 1``), so the stream's state (``state_dict``) has the same size whatever the
    documents' lengths. Segments are copied from views of the documents into one new array per batch.

    Args:
        documents: token arrays, one per document.
        batch_size: number of rows B.
        seq_len: tokens per segment.
        repeat: loop forever over reshuffled epochs.
        seed: shuffling seed; with ``repeat=False`` the order is kept as given.
        sos_id, pad_id: the ids that start each document and fill finished rows (bytes' by default; a
            tokenizer's for its ids).
    """

    NO_DOCUMENT = -1  # a row's document index before its first document and after the last one

    def __init__(self, documents: Sequence[np.ndarray], *, batch_size: int, seq_len: int,
                 repeat: bool, seed: int = 0, sos_id: int = SOS_ID, pad_id: int = PAD_ID) -> None:
        if not documents:
            raise ValueError("DocumentStream needs at least one document")
        if batch_size < 1 or seq_len < 1:
            raise ValueError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        self.documents = documents
        self.batch_size, self.seq_len = batch_size, seq_len
        self.repeat, self.seed = repeat, seed
        self.sos_id, self.pad_id = sos_id, pad_id
        self.epoch = 0
        self.cursor = 0  # next position in this epoch's order
        self.order = self._order(0, seed)
        # per row: (index of the document it reads, offset of its next token in it; see the class docstring)
        self.rows: list[tuple[int, int]] = [(self.NO_DOCUMENT, 0)] * batch_size
        self.documents_started = 0

    def _order(self, epoch: int, seed: int) -> np.ndarray:
        if not self.repeat:
            return np.arange(len(self.documents))
        return np.random.default_rng([seed, epoch]).permutation(len(self.documents))

    def _next_document(self) -> int | None:
        """The index of the next document in the queue (None when a stream without ``repeat`` has no more)."""
        if self.cursor == len(self.order):
            if not self.repeat:
                return None
            self.epoch += 1
            self.order, self.cursor = self._order(self.epoch, self.seed), 0
        index = int(self.order[self.cursor])
        self.cursor += 1
        self.documents_started += 1
        return index

    def _unread(self, row: int) -> int:
        """How many tokens of its document (the document-start id included) ``row`` has not yet read."""
        index, offset = self.rows[row]
        return 0 if index == self.NO_DOCUMENT else len(self.documents[index]) + 1 - offset

    @property
    def exhausted(self) -> bool:
        """No more real tokens to predict (only with ``repeat=False``)."""
        return not self.repeat and self.cursor == len(self.order) and all(self._unread(r) <= 1 for r in range(self.batch_size))

    def __iter__(self) -> Iterator[Batch]:
        while not self.exhausted:
            yield self.next_batch()

    def _read(self, row: int, out: np.ndarray) -> int:
        """Copies ``row``'s next ``len(out)`` tokens into ``out`` (fewer if the documents run out), taking
        documents from the queue as it needs them; returns how many it copied. The row then stands at the
        last token copied: the label of this segment's last input is the next segment's first input."""
        index, offset = self.rows[row]
        filled = 0
        while filled < len(out):
            if index == self.NO_DOCUMENT or offset > len(self.documents[index]):  # take the next document
                next_index = self._next_document()
                if next_index is None:
                    self.rows[row] = (self.NO_DOCUMENT, 0)
                    return filled
                index, offset = next_index, 0
            if offset == 0:
                out[filled] = self.sos_id
                filled, offset = filled + 1, 1
                continue
            piece = self.documents[index][offset - 1 : offset - 1 + len(out) - filled]  # a view
            out[filled : filled + len(piece)] = piece
            filled, offset = filled + len(piece), offset + len(piece)
        self.rows[row] = (index, offset - 1)
        return filled

    def next_batch(self) -> Batch:
        n = self.seq_len
        window = np.full((self.batch_size, n + 1), self.pad_id, dtype=np.int64)  # each row's inputs and last label
        labels = np.full((self.batch_size, n), IGNORE_INDEX, dtype=np.int64)
        for row in range(self.batch_size):
            filled = self._read(row, window[row])
            targets = window[row, 1:filled]
            labels[row, : len(targets)] = targets
        return Batch(torch.from_numpy(np.ascontiguousarray(window[:, :n])), torch.from_numpy(labels))

    def state_dict(self) -> dict:
        """Position in the data as plain JSON-able values: the epoch, the next position in its order, the seed,
        the number of documents, and each row's (document index, offset)."""
        return {
            "epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
            "documents_started": self.documents_started, "documents": len(self.documents),
            "rows": [[index, offset] for index, offset in self.rows],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores a ``state_dict``; the older format (each row's unread tokens, ``pending``) is converted.

        Raises:
            ValueError: another batch size, another number of documents, a position outside the documents, or an
                older state whose unread tokens end no document of this stream.
        """
        rows = state["pending"] if "pending" in state else state["rows"]
        if len(rows) != self.batch_size:
            raise ValueError(f"data state has {len(rows)} rows but this stream has batch size {self.batch_size}")
        if "documents" in state and state["documents"] != len(self.documents):
            raise ValueError(f"data state is over {state['documents']} documents but this data has {len(self.documents)}")
        seed, epoch, cursor = (int(state[key]) for key in ("seed", "epoch", "cursor"))
        order = self._order(epoch, seed)
        if not 0 <= cursor <= len(order):
            raise ValueError(f"data state's cursor {cursor} is outside an epoch of {len(order)} documents")
        if "pending" in state:
            rows = [self._position_of(np.asarray(unread, dtype=np.int64), order[:cursor][::-1], row)
                    for row, unread in enumerate(rows)]
        for row, (index, offset) in enumerate(rows):
            if index != self.NO_DOCUMENT and not (0 <= index < len(self.documents)
                                                  and 0 <= offset <= len(self.documents[index])):
                raise ValueError(f"data state's row {row} stands at offset {offset} of document {index}, outside "
                                 f"the {len(self.documents)} documents of this data")
        self.seed, self.epoch, self.cursor, self.order = seed, epoch, cursor, order
        self.documents_started = int(state["documents_started"])
        self.rows = [(int(index), int(offset)) for index, offset in rows]

    def _position_of(self, unread: np.ndarray, recent: np.ndarray, row: int) -> tuple[int, int]:
        """The (document, offset) of a row whose unread tokens are ``unread`` (the older state format): a
        document that ends with them, looked for among the ``recent`` documents first, then all. Documents that
        end alike give the same batches, so any of them will do.

        Raises:
            ValueError: no document ends with them.
        """
        if not len(unread):
            return self.NO_DOCUMENT, 0
        for index in itertools.chain(recent.tolist(), range(len(self.documents))):
            document = self.documents[index]
            offset = len(document) + 1 - len(unread)
            if offset < 0:
                continue
            if offset == 0:
                matches = unread[0] == self.sos_id and np.array_equal(document, unread[1:])
            else:
                matches = np.array_equal(document[offset - 1 :], unread)
            if matches:
                return index, offset
        raise ValueError(f"older data state: row {row}'s unread tokens end no document of this data; the data position "
                         f"cannot be restored: start a new run (--init-from takes its weights)")


class _Failed:
    """What the prefetching thread hands over instead of a batch when reading one raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class PrefetchedStream:
    """A ``BatchStream`` read ``depth`` batches ahead by a background thread, so batching overlaps the training
    step.

    Batches come out in the stream's own order, so a run is the same with or without it. Its position
    (``state_dict``, ``documents_started``) is the stream's position after the last batch handed out, not after
    the ones read ahead, so a checkpoint resumes exactly. An error while reading is raised by the ``next_batch``
    call that would have returned that batch. The thread starts with the first ``next_batch``; ``close`` stops
    it and puts the stream back to the position handed out (a later ``next_batch`` starts a new thread from
    there). The thread is a daemon: it never keeps the process alive.
    """

    def __init__(self, stream: BatchStream, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.stream, self.depth = stream, depth
        self._state = stream.state_dict()
        self.documents_started = stream.documents_started
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        """The thread: puts (batch, position after it, documents started) into ``out`` until ``stop`` is set; an
        error is put as the last item."""
        while not stop.is_set():
            try:
                batch = self.stream.next_batch()
                item: Any = (batch, self.stream.state_dict(), self.stream.documents_started)
            except BaseException as error:  # handed to the reader, which raises it
                item = _Failed(error)
            out.put(item)  # close() makes room after setting stop
            if isinstance(item, _Failed):
                return

    def next_batch(self) -> Batch:
        if self._thread is None:
            self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
            self._thread = threading.Thread(target=self._produce, args=(self._queue, self._stop), daemon=True,
                                            name="prefetch-batches")
            self._thread.start()
        item = self._queue.get()
        if isinstance(item, _Failed):
            self.close()
            raise item.error
        batch, self._state, self.documents_started = item
        return batch

    def close(self) -> None:
        """Stops the thread (after the batch it is reading) and puts the stream back to the position handed out."""
        if self._thread is None:
            return
        self._stop.set()
        while True:  # make room, so that a thread waiting to put a batch sees the stop
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._thread = None
        self.stream.load_state_dict(self._state)

    def state_dict(self) -> dict[str, Any]:
        """The position after the last batch handed out."""
        return copy.deepcopy(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.stream.load_state_dict(state)
        self._state, self.documents_started = self.stream.state_dict(), self.stream.documents_started
