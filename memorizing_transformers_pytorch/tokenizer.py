"""Tokenizers: raw bytes (the default), or a Hugging Face ``tokenizers`` tokenizer read from a ``tokenizer.json``.

``train_tokenizer`` trains a byte-level BPE (the GPT-2 scheme: the 256 bytes are tokens, merges are learned on
the corpus, and decoding gives back the text exactly) with two special tokens: ``<pad>`` (id 0) and ``<s>``
(id 1, the start of each document). Both kinds of tokenizer offer one interface, ``Tokenizer``, which data,
training, evaluation and generation use:

    num_tokens        vocabulary size (the model's ``num_tokens``)
    pad_id, sos_id    padding and document start (the model's ``pad_id`` and ``clear_memories_on_sos_token_id``)
    encode(text)      ``(n,)`` token ids of the text, never a special token
    decode(ids)       the text of ids
    stream_decoder()  a function of one id that returns the text it completes ("" while a character is pending)
    token_bytes       ``(num_tokens,)`` bytes of text per token (0 for special tokens), or None (one byte each)

Bits per byte need ``token_bytes``: the bytes a run of tokens stands for is the sum of its tokens' entries,
exactly the UTF-8 length of its text for a byte-level tokenizer.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    import tokenizers


__all__ = ["Tokenizer", "ByteTokenizer", "HuggingFaceTokenizer", "BYTES", "BYTE_PAD_ID", "BYTE_SOS_ID",
           "byte_tokens", "train_tokenizer", "load_tokenizer", "check_same_tokenizer", "check_model_fits", "encoding_throughput", "PAD_TOKEN",
           "SOS_TOKEN"]

BYTE_PAD_ID = 0
BYTE_SOS_ID = 2  # ASCII "start of text"
PAD_TOKEN, SOS_TOKEN = "<pad>", "<s>"
# names other tokenizers give these two, tried in order when a tokenizer.json lacks ours
SPECIAL_TOKENS_FILE = "tokenizer_config.json"  # beside tokenizer.json: which tokens pad and start documents
PAD_NAMES = (PAD_TOKEN, "<|pad|>", "[PAD]", "<|padding|>")
SOS_NAMES = (SOS_TOKEN, "<|begin_of_text|>", "<bos>", "<|startoftext|>", "<|endoftext|>", "[CLS]")
MIN_VOCAB_SIZE = 258  # the 256 bytes and the two special tokens


class Tokenizer(Protocol):
    """What the rest of the package needs from a tokenizer (see the module docstring)."""

    num_tokens: int
    pad_id: int
    sos_id: int
    token_bytes: np.ndarray | None

    def encode(self, text: str) -> np.ndarray: ...

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def stream_decoder(self) -> Callable[[int], str]: ...

    def model_fields(self) -> dict[str, int]: ...


def byte_tokens(data: bytes) -> np.ndarray:
    """Bytes as uint8 tokens, with the reserved padding and document-start bytes replaced by a space."""
    tokens = np.frombuffer(data, dtype=np.uint8).copy()
    tokens[(tokens == BYTE_PAD_ID) | (tokens == BYTE_SOS_ID)] = ord(" ")
    return tokens


def read_prompt_bytes(path: str | Path, what: str) -> bytes:
    """A file's bytes, with the byte-level padding and document-start bytes (0, 2) read as spaces.

    Raises:
        FileNotFoundError: naming ``what`` and the path.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    return data.replace(b"\x00", b" ").replace(b"\x02", b" ")


class ByteTokenizer:
    """Bytes as tokens: 256 ids; bytes 0 and 2 are padding and document start (they become spaces in text)."""

    num_tokens = 256
    pad_id = BYTE_PAD_ID
    sos_id = BYTE_SOS_ID
    token_bytes = None  # one byte per token: bits per byte count the scored tokens

    def encode(self, text: str) -> np.ndarray:
        return byte_tokens(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def stream_decoder(self) -> Callable[[int], str]:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        return lambda token: decoder.decode(bytes([token]))

    def model_fields(self) -> dict[str, int]:
        return {"num_tokens": self.num_tokens, "pad_id": self.pad_id, "clear_memories_on_sos_token_id": self.sos_id}

    def __repr__(self) -> str:
        return "ByteTokenizer()"


BYTES = ByteTokenizer()


class HuggingFaceTokenizer:
    """A ``tokenizers.Tokenizer`` behind the ``Tokenizer`` interface.

    The padding and document-start ids are its ``<pad>`` and ``<s>`` tokens, or failing those the first of
    ``PAD_NAMES`` / ``SOS_NAMES`` it has; a tokenizer with neither gets ``<pad>`` / ``<s>`` added as special
    tokens at the end of its vocabulary (so store the tokenizer this returns, ``to_json``, with what it made).
    Text is encoded without the tokenizer's own special tokens (no BOS/EOS template), and special-token text
    inside a document (a literal ``"<s>"``) is encoded as text, so a document never holds a special id.

    Raises:
        TypeError: not a ``tokenizers.Tokenizer``.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, pad_token: str | None = None, sos_token: str | None = None
                 ) -> None:
        import tokenizers

        if not isinstance(tokenizer, tokenizers.Tokenizer):
            raise TypeError(f"expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}")
        tokenizer = tokenizers.Tokenizer.from_str(tokenizer.to_str())  # a copy: the settings below are ours
        tokenizer.no_padding()
        tokenizer.no_truncation()
        for token, what in ((pad_token, "padding"), (sos_token, "document-start")):
            if token is not None and tokenizer.token_to_id(token) is None:
                raise ValueError(f"the {what} token {token!r} is not in the tokenizer's vocabulary")
        pad_names = (pad_token,) if pad_token is not None else PAD_NAMES
        sos_names = (sos_token,) if sos_token is not None else SOS_NAMES
        for names, default in ((pad_names, PAD_TOKEN), (sos_names, SOS_TOKEN)):
            if all(tokenizer.token_to_id(name) is None for name in names):
                tokenizer.add_special_tokens([default])
        tokenizer.encode_special_tokens = True
        self._tokenizer = tokenizer
        self.pad_token = next(n for n in (*pad_names, PAD_TOKEN) if tokenizer.token_to_id(n) is not None)
        self.sos_token = next(n for n in (*sos_names, SOS_TOKEN) if tokenizer.token_to_id(n) is not None)
        self.pad_id = tokenizer.token_to_id(self.pad_token)
        self.sos_id = tokenizer.token_to_id(self.sos_token)
        self.num_tokens = max(self.vocabulary.values()) + 1
        self.dtype = np.dtype(np.uint16 if self.num_tokens <= 1 << 16 else np.uint32)

    @classmethod
    def from_file(cls, path: str | Path) -> HuggingFaceTokenizer:
        """Reads a ``tokenizer.json``, or the one in a folder. Where the vocabulary has none of ``PAD_NAMES``
        (``SOS_NAMES``), a ``tokenizer_config.json`` beside it (a Hugging Face model folder's) names the padding
        (document-start) token, its ``pad_token`` (``bos_token``), so that a pretrained model's own special
        tokens are used instead of new ones beyond its vocabulary.

        Raises:
            FileNotFoundError: no such file. ValueError: not a tokenizer.json.
        """
        import tokenizers

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer not found: {file}" + (" (a folder needs a tokenizer.json)" if path.is_dir() else ""))
        try:
            tokenizer = tokenizers.Tokenizer.from_file(str(file))
        except Exception as error:  # the Rust side raises a plain Exception
            raise ValueError(f"{file} is not a tokenizer.json of the tokenizers library: {error}") from None
        names = _special_token_names(file.parent / SPECIAL_TOKENS_FILE)
        has = lambda candidates: any(tokenizer.token_to_id(name) is not None for name in candidates)
        return cls(tokenizer, pad_token=None if has(PAD_NAMES) else names.get("pad_token"),
                   sos_token=None if has(SOS_NAMES) else names.get("bos_token"))

    @classmethod
    def from_json(cls, text: str) -> HuggingFaceTokenizer:
        import tokenizers

        return cls(tokenizers.Tokenizer.from_str(text))

    # ----------------------------------------------------------------------------------- identity
    def to_json(self) -> str:
        return self._tokenizer.to_str()

    def files(self) -> dict[str, str]:
        """The files that ``from_file`` reads this tokenizer back from, by name: ``tokenizer.json``, and a
        ``tokenizer_config.json`` naming its padding and document-start tokens."""
        names = json.dumps({"pad_token": self.pad_token, "bos_token": self.sos_token}, indent=2) + "\n"
        return {"tokenizer.json": self.to_json(), SPECIAL_TOKENS_FILE: names}

    def save(self, path: str | Path) -> Path:
        """Writes the tokenizer to ``path``: a ``.json`` file, or ``tokenizer.json`` in that folder, with the
        ``tokenizer_config.json`` beside it (see ``files``; an existing one keeps its other keys)."""
        path = Path(path)
        file = path if path.suffix == ".json" and not path.is_dir() else path / "tokenizer.json"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(self.to_json())
        config = file.parent / SPECIAL_TOKENS_FILE
        existing = json.loads(config.read_text()) if config.is_file() else {}
        config.write_text(json.dumps({**existing, **json.loads(self.files()[SPECIAL_TOKENS_FILE])}, indent=2) + "\n")
        return file

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the tokenizer's JSON (what caches of its tokenizations are keyed by)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    @cached_property
    def vocabulary(self) -> dict[str, int]:
        """Token text -> id, special tokens included."""
        return self._tokenizer.get_vocab(with_added_tokens=True)

    def same_vocabulary(self, other: Tokenizer) -> bool:
        return isinstance(other, HuggingFaceTokenizer) and (self.vocabulary, self.pad_id, self.sos_id) == (
            other.vocabulary, other.pad_id, other.sos_id)

    def describe_difference(self, other: Tokenizer) -> str:
        """Why ``other``'s vocabulary is not this one's, in words (for error messages)."""
        if not isinstance(other, HuggingFaceTokenizer):
            return f"{other.num_tokens} byte tokens against {self.num_tokens} tokens"
        if other.num_tokens != self.num_tokens:
            return f"{other.num_tokens} tokens against {self.num_tokens}"
        if (other.pad_id, other.sos_id) != (self.pad_id, self.sos_id):
            return f"padding / document-start ids {other.pad_id} / {other.sos_id} against {self.pad_id} / {self.sos_id}"
        mine = {i: t for t, i in self.vocabulary.items()}
        theirs = {i: t for t, i in other.vocabulary.items()}
        differing = sorted(i for i in mine.keys() | theirs.keys() if mine.get(i) != theirs.get(i))
        i = differing[0]
        return f"{len(differing)} of {self.num_tokens} ids name other tokens (id {i}: {theirs.get(i)!r} against {mine.get(i)!r})"

    def model_fields(self) -> dict[str, int]:
        """The model config fields this tokenizer sets."""
        return {"num_tokens": self.num_tokens, "pad_id": self.pad_id, "clear_memories_on_sos_token_id": self.sos_id}

    # ----------------------------------------------------------------------------------- text <-> ids
    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, dtype=self.dtype)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encodes texts in parallel (the library's own threads)."""
        encodings = self._tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=self.dtype) for e in encodings]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def stream_decoder(self) -> Callable[[int], str]:
        from tokenizers.decoders import DecodeStream

        stream = DecodeStream(skip_special_tokens=True)
        return lambda token: stream.step(self._tokenizer, int(token)) or ""

    @cached_property
    def token_bytes(self) -> np.ndarray:
        """``(num_tokens,)`` int64: the UTF-8 bytes each token stands for; 0 for special tokens.

        Exact for byte-level tokenizers (each character of a token's text is one byte); otherwise the length of
        the token decoded alone, which can miss a leading space or a byte-fallback piece.
        """
        counts = np.zeros(self.num_tokens, dtype=np.int64)
        added = self._tokenizer.get_added_tokens_decoder()
        byte_level = _is_byte_level(json.loads(self.to_json()).get("decoder"))
        for token, i in self.vocabulary.items():
            if i in added:
                counts[i] = 0 if added[i].special else len(token.encode("utf-8"))
            elif byte_level:
                counts[i] = len(token)
            else:
                counts[i] = len(self._tokenizer.decode([i]).encode("utf-8"))
        return counts

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer(num_tokens={self.num_tokens}, pad_id={self.pad_id}, sos_id={self.sos_id})"


def _is_byte_level(decoder: dict[str, Any] | None) -> bool:
    if not decoder:
        return False
    if decoder.get("type") == "Sequence":
        return any(_is_byte_level(d) for d in decoder.get("decoders", []))
    return decoder.get("type") == "ByteLevel"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int, min_frequency: int = 2, progress: bool = False
                    ) -> HuggingFaceTokenizer:
    """Trains a byte-level BPE on ``texts`` (one document each): ``<pad>`` is id 0, ``<s>`` id 1, the 256 bytes
    follow, then the learned merges up to ``vocab_size`` tokens in all.

    Raises:
        TypeError, ValueError: a vocabulary size that is not an int >= 258; no text to train on.
    """
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__} {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be >= {MIN_VOCAB_SIZE} (256 bytes and 2 special tokens), got {vocab_size}")
    seen = {"documents": 0, "characters": 0}

    def counted(texts: Iterable[str]) -> Iterable[str]:
        for text in texts:
            seen["documents"] += 1
            seen["characters"] += len(text)
            yield text

    tokenizer = tokenizers.Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=progress,
                                  special_tokens=[PAD_TOKEN, SOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(counted(texts), trainer)
    if seen["characters"] == 0:
        raise ValueError(f"no text to train a tokenizer on ({seen['documents']} documents, all empty)")
    return HuggingFaceTokenizer(tokenizer)


def _special_token_names(path: Path) -> dict[str, str]:
    """``pad_token`` and ``bos_token`` of a ``tokenizer_config.json`` (plain strings, or ``{"content": ...}``)."""
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as error:
        raise ValueError(f"{path} is not JSON: {error}") from None
    names = {}
    for key in ("pad_token", "bos_token"):
        value = config.get(key) if isinstance(config, dict) else None
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            names[key] = value
    return names


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """The tokenizer in a ``tokenizer.json`` (or a folder holding one); bytes for ``None`` or ``""``."""
    return HuggingFaceTokenizer.from_file(path) if path else BYTES


def check_same_tokenizer(given: Tokenizer, expected: Tokenizer, what: str) -> None:
    """Checks that ``given`` has ``expected``'s vocabulary (bytes match only bytes).

    Raises:
        ValueError: naming ``what`` and how the two differ.
    """
    if isinstance(expected, HuggingFaceTokenizer):
        if not expected.same_vocabulary(given):
            raise ValueError(f"{what}: the tokenizer does not match ({expected.describe_difference(given)})")
    elif isinstance(given, HuggingFaceTokenizer):
        raise ValueError(f"{what}: the tokenizer does not match ({given.num_tokens} tokens against bytes)")


def check_model_fits(tokenizer: Tokenizer, config: Any, what: str, *, num_tokens: int | None = None) -> None:
    """Checks that a model config has the tokenizer's padding / document-start ids, and its ``num_tokens``.

    A config without ``num_tokens`` (the memory config of a pretrained model, ``hf.HFMemoryConfig``) is checked
    against ``num_tokens``, the model's vocabulary, which may hold more ids than its tokenizer uses.

    Raises:
        ValueError: naming ``what``, each field that differs and the tokenizer's value.
    """
    fields = tokenizer.model_fields()
    wrong = []
    if hasattr(config, "num_tokens"):
        if config.num_tokens != fields["num_tokens"]:
            wrong.append(f"num_tokens={config.num_tokens} (the tokenizer's: {fields['num_tokens']})")
    elif num_tokens is not None and fields["num_tokens"] > num_tokens:
        wrong.append(f"a vocabulary of {num_tokens} tokens (the tokenizer has {fields['num_tokens']})")
    for name, value in fields.items():
        # a pretrained model's memory config may have no padding id (its tokenizer's padding token is then
        # also a token it reads, such as an end-of-turn marker); streams of whole documents need none
        unpadded = name == "pad_id" and not hasattr(config, "num_tokens") and config.pad_id is None
        if name != "num_tokens" and not unpadded and getattr(config, name) != value:
            wrong.append(f"{name}={getattr(config, name)} (the tokenizer's: {value})")
    if wrong:
        raise ValueError(f"{what}: the model does not fit the tokenizer: {', '.join(wrong)}")


def encoding_throughput(tokenizer: Tokenizer, texts: Sequence[str], *, batch: int = 256) -> dict[str, float]:
    """Encodes ``texts`` in batches and times it: tokens, bytes, seconds, tokens per second, bytes per token."""
    started = time.perf_counter()
    tokens = sum(len(ids) for start in range(0, len(texts), batch) for ids in tokenizer.encode_batch(texts[start : start + batch]))
    seconds = time.perf_counter() - started
    size = sum(len(text.encode("utf-8")) for text in texts)
    return {"documents": len(texts), "tokens": tokens, "bytes": size, "seconds": seconds,
            "tokens_per_s": tokens / max(seconds, 1e-9), "bytes_per_token": size / max(tokens, 1)}
