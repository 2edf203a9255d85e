"""Token shards: a corpus tokenized once, stored as a memmap of ids plus document offsets, and read without
loading it into memory.

A shard folder (``write_shards``; ``memorizing-transformers prepare`` on the command line) holds::

    meta.json             format, dtype, num_tokens, padding / document-start ids, the tokenizer's hash,
                          the source, and per split the number of documents, tokens and bytes of text
    tokenizer.json        the tokenizer that made it
    SPLIT.bin             the split's token ids, document after document (little-endian uint16 or uint32)
    SPLIT.offsets.npy     int64 (documents + 1,): document d is ids[offsets[d] : offsets[d + 1]]

``ShardDocuments`` reads one split as a sequence of memmap views, one per document. The tokenization cache
(``tokenize_cached``) writes the same format, one split per folder under ``cache_dir()``, keyed by a hash of
the tokenizer and the documents, so the second run that reads the same text with the same tokenizer reuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from .tokenizer import HuggingFaceTokenizer

__all__ = ["ShardDocuments", "write_shards", "tokenize_cached", "tokenize_documents", "read_meta", "shard_tokenizer",
           "cache_dir", "FORMAT"]

FORMAT = 1
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
CHECK_CHUNK = 1 << 24  # ids scanned at a time when checking a shard's range
CACHE_ENV = "MEMORIZING_TRANSFORMERS_CACHE"


def cache_dir() -> Path:
    """Where tokenized corpora are cached: ``$MEMORIZING_TRANSFORMERS_CACHE``, else ``~/.cache/memorizing_transformers``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "memorizing_transformers")


def read_meta(folder: str | Path) -> dict[str, Any]:
    """A shard folder's ``meta.json``.

    Raises:
        FileNotFoundError: no shard there. ValueError: not a shard's meta.json, or another format.
    """
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"no token shards at {folder} (no meta.json; write them with `memorizing-transformers prepare`)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("dtype") not in DTYPES:
        raise ValueError(f"{path} is not a shard meta.json of format {FORMAT} with dtype uint16 or uint32")
    return meta


def shard_tokenizer(folder: str | Path) -> HuggingFaceTokenizer:
    """The tokenizer a shard folder was made with (its ``tokenizer.json``)."""
    read_meta(folder)
    return HuggingFaceTokenizer.from_file(Path(folder) / "tokenizer.json")


class ShardDocuments(Sequence[np.ndarray]):
    """The documents of one split of a shard folder: ``documents[d]`` is a ``(n_d,)`` memmap view of its ids
    (read from disk only when used).

    On opening, the files are checked against ``meta.json`` (sizes, offsets) and every id against
    ``num_tokens`` (the shard's, and the model's if given), a chunk at a time.

    Raises:
        FileNotFoundError: no shard or split file. ValueError: files that do not match the meta, ids out of range.
    """

    def __init__(self, folder: str | Path, split: str, *, num_tokens: int | None = None) -> None:
        self.folder, self.split = Path(folder), split
        meta = read_meta(folder)
        if split not in meta.get("splits", {}):
            raise ValueError(f"token shards at {folder} have no {split!r} split (they have {sorted(meta.get('splits', {}))})")
        self.meta = meta
        self.num_tokens = int(meta["num_tokens"])
        dtype = DTYPES[meta["dtype"]]
        ids_path, offsets_path = self.folder / f"{split}.bin", self.folder / f"{split}.offsets.npy"
        for path in (ids_path, offsets_path):
            if not path.is_file():
                raise FileNotFoundError(f"token shard file missing: {path}")
        self.offsets = np.load(offsets_path)
        expected = meta["splits"][split]
        size = ids_path.stat().st_size
        if (self.offsets.dtype != np.int64 or self.offsets.ndim != 1 or len(self.offsets) != expected["documents"] + 1
                or self.offsets[0] != 0 or self.offsets[-1] != expected["tokens"] or (np.diff(self.offsets) <= 0).any()
                or size != expected["tokens"] * dtype.itemsize):
            raise ValueError(f"token shard {ids_path} ({size} bytes) does not match its offsets and meta.json "
                             f"({expected['documents']} documents, {expected['tokens']} tokens of {meta['dtype']})")
        self.ids = np.memmap(ids_path, dtype=dtype, mode="r") if size else np.zeros(0, dtype=dtype)
        self._check_range(num_tokens)

    def _check_range(self, num_tokens: int | None) -> None:
        limit = self.num_tokens if num_tokens is None else min(self.num_tokens, num_tokens)
        for start in range(0, len(self.ids), CHECK_CHUNK):
            chunk = self.ids[start : start + CHECK_CHUNK]
            if int(chunk.max()) >= limit:
                where = start + int(np.argmax(chunk >= limit))
                raise ValueError(
                    f"token shard {self.folder / (self.split + '.bin')} holds id {int(self.ids[where])} at position {where}, "
                    f"beyond num_tokens={limit}" + ("" if limit == self.num_tokens else f" of the model (the shard's is {self.num_tokens})"))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"document {index} of {len(self)}")
        index %= len(self)
        return self.ids[self.offsets[index] : self.offsets[index + 1]]

    @property
    def num_ids(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"ShardDocuments({str(self.folder)!r}, {self.split!r}: {len(self)} documents, {self.num_ids} tokens)"


def tokenize_documents(documents: Sequence[np.ndarray], tokenizer: HuggingFaceTokenizer, *, batch: int = 64,
                       progress: bool = True, description: str = "tokenizing") -> Iterator[np.ndarray]:
    """Token ids of byte documents (uint8 arrays of UTF-8 text, invalid bytes read as U+FFFD), in order, with a
    progress bar in bytes."""
    from tqdm.auto import tqdm  # a training extra; reading shards needs only numpy

    bar = tqdm(total=sum(len(d) for d in documents), unit="B", unit_scale=True, desc=description, disable=None if progress else True,
               leave=False)
    tokens = 0
    for start in range(0, len(documents), batch):
        chunk = documents[start : start + batch]
        encoded = tokenizer.encode_batch([np.asarray(d, dtype=np.uint8).tobytes().decode("utf-8", errors="replace")
                                          for d in chunk])
        yield from encoded
        tokens += sum(len(ids) for ids in encoded)
        bar.update(sum(len(d) for d in chunk))
        bar.set_postfix(tokens=tokens, refresh=False)
    bar.close()


def _write_split(folder: Path, split: str, token_documents: Iterable[np.ndarray], tokenizer: HuggingFaceTokenizer,
                 dtype: np.dtype) -> dict[str, int]:
    offsets, tokens, size = [0], 0, 0
    with open(folder / f"{split}.bin", "wb") as file:
        for ids in token_documents:
            if len(ids) == 0:  # an empty document: nothing to read
                continue
            if int(ids.max()) >= tokenizer.num_tokens:
                raise ValueError(f"the tokenizer produced id {int(ids.max())} beyond its num_tokens={tokenizer.num_tokens}")
            file.write(np.asarray(ids).astype(dtype, copy=False).tobytes())
            tokens += len(ids)
            size += int(tokenizer.token_bytes[ids].sum())
            offsets.append(tokens)
    np.save(folder / f"{split}.offsets.npy", np.asarray(offsets, dtype=np.int64))
    return {"documents": len(offsets) - 1, "tokens": tokens, "bytes": size}


def write_shards(folder: str | Path, splits: Iterable[tuple[str, Iterable[np.ndarray]]], tokenizer: HuggingFaceTokenizer,
                 *, source: str = "", replace: bool = False) -> dict[str, Any]:
    """Writes token documents split by split into a shard folder, atomically (a temporary folder renamed into
    place), and returns its meta.

    Args:
        splits: ``(split name, token id arrays)`` pairs; empty documents are dropped.
        replace: overwrite an existing shard folder (never a folder that is not one).

    Raises:
        FileExistsError: ``folder`` exists and is not a shard folder to replace.
    """
    folder = Path(folder)
    if folder.exists() and not (replace and (folder / "meta.json").is_file()):
        raise FileExistsError(f"{folder} exists" + ("" if (folder / "meta.json").is_file() else " and holds no token shards"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES["uint16" if tokenizer.num_tokens <= 1 << 16 else "uint32"]
    remove_stale_temporaries(folder)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    (tmp / OWNER).write_text(f"{os.getpid()}\n")
    try:
        written = {name: _write_split(tmp, name, documents, tokenizer, dtype) for name, documents in splits}
        tokenizer.save(tmp / "tokenizer.json")
        meta = {"format": FORMAT, "dtype": str(dtype.name), "num_tokens": tokenizer.num_tokens, "pad_id": tokenizer.pad_id,
                "sos_id": tokenizer.sos_id, "tokenizer_sha256": tokenizer.fingerprint, "source": source, "splits": written}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if replace and folder.exists():
            shutil.rmtree(folder)
        (tmp / OWNER).unlink()
        try:
            os.replace(tmp, folder)  # fails if another process made the folder meanwhile: theirs stays
        except OSError:
            if folder.exists():
                raise FileExistsError(f"{folder} was written by another process meanwhile; its shards are kept "
                                      f"(use them, or --force to replace them)") from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


OWNER = ".owner-pid"  # in a temporary shard folder: the pid of the process writing it


def remove_stale_temporaries(folder: Path) -> None:
    """Deletes the temporary folders that writers of ``folder`` left behind when they were killed (their owner
    process is gone, or they name none)."""
    for tmp in folder.parent.glob(f".{folder.name}.*"):
        try:
            if not (tmp / OWNER).exists() and time.time() - tmp.stat().st_mtime < 60:
                continue  # just made: its owner is about to write its pid
            pid = int((tmp / OWNER).read_text())
            os.kill(pid, 0)  # raises if no such process
            continue
        except (OSError, ValueError):
            shutil.rmtree(tmp, ignore_errors=True)


def tokenize_cached(documents: Sequence[np.ndarray], tokenizer: HuggingFaceTokenizer, *, split: str, source: str = "",
                    progress: bool = True) -> ShardDocuments:
    """The token documents of byte ``documents``: tokenized once into the cache, read from there afterwards.

    The cache key is a hash of the tokenizer's JSON, the split's name and every document's bytes, so changed text
    or another tokenizer is tokenized afresh. Runs that tokenize the same text at once both write; one wins.
    """
    key = hashlib.blake2b(f"{FORMAT}:{tokenizer.fingerprint}:{split}".encode(), digest_size=16)
    for document in documents:
        key.update(len(document).to_bytes(8, "little"))
        key.update(np.asarray(document, dtype=np.uint8).tobytes())
    folder = cache_dir() / "tokens" / key.hexdigest()
    if not (folder / "meta.json").is_file():
        token_documents = tokenize_documents(documents, tokenizer, progress=progress, description=f"tokenizing {split}")
        try:
            write_shards(folder, [(split, token_documents)], tokenizer, source=source)
        except (FileExistsError, OSError):  # another run wrote it first
            if not (folder / "meta.json").is_file():
                raise
    return ShardDocuments(folder, split)
