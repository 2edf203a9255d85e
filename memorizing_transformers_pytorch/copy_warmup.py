"""The copy warm-up: random bytes holding a string and its copy, the loss on the copied bytes only.

A kNN memory is only useful to a model that can copy by content (an "induction" circuit: each token's
predecessor moved forward, and a head that matches it). Small byte-level models learn that circuit on this
task, and from there real code or the recall task train within a few hundred steps; on those alone they
did not start in 12,000 steps (dev/LOG.md). With ``token_shift`` (config.py) and the memorizing layer
first, the circuit forms in 150-200 steps of this task; without them after 3,500-5,000 (seed-dependent).
It is the data source ``--data copy[:span=48][,vocab=V]`` of the normal training loop, whose batches are independent
segments (``Batch.new_streams``): a warm-up run writes a checkpoint like any other, and the real run
continues it with ``--init-from`` (the demo does this: ``demo.py``)::

    memorizing-transformers train --preset small --memorizing-layers 1 --token-shift 1 --data copy \
        --seq-len 128 --batch-size 8 --steps 400 --lr 2e-3 --min-lr-ratio 1 --weight-decay 0.01 \
        --adam-beta2 0.999 --run-dir runs/warmup
    memorizing-transformers train --preset small --memorizing-layers 1 --token-shift 1 --init-from runs/warmup ...

A byte-level model copies bytes of ``ALPHABET``. A token-level model should copy tokens of its whole vocabulary
(``copy:vocab=4096``: ids 2 to 4095, past a tokenizer's ``<pad>`` = 0 and ``<s>`` = 1, tokenizer.py), so that
every token's embedding, not only the 256 bytes', takes part in the copy circuit; the demo does this when it
trains with a tokenizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import IGNORE_INDEX, Batch, Source, register_source

__all__ = ["ALPHABET", "FIRST_TOKEN_ID", "copy_batch", "CopyStream", "parse_copy_source", "token_alphabet"]

# printable ASCII but ';' (the recall task's separator), then the 128 non-ASCII bytes
ALPHABET = np.array([c for c in range(0x21, 0x7F) if c != ord(";")] + list(range(128, 256)), dtype=np.uint8)
FIRST_TOKEN_ID = 2  # a tokenizer's ids 0 and 1 are <pad> and <s> (tokenizer.py)


def token_alphabet(vocab: int) -> np.ndarray:
    """The ids a token-level copy draws from: ``FIRST_TOKEN_ID`` to ``vocab - 1``."""
    if vocab <= FIRST_TOKEN_ID + 1:
        raise ValueError(f"copy source: vocab must be > {FIRST_TOKEN_ID + 1} (ids from {FIRST_TOKEN_ID}), got {vocab}")
    return np.arange(FIRST_TOKEN_ID, vocab, dtype=np.int64)


def copy_batch(batch_size: int, seq_len: int, span: int, rng: np.random.Generator,
               alphabet: np.ndarray = ALPHABET) -> tuple[Tensor, Tensor]:
    """Rows of random bytes, each holding a random string of ``span`` bytes and, ``span`` to ``seq_len - span``
    bytes later, its copy: ``(B, seq_len)`` tokens and a ``(B, seq_len)`` mask of the copied bytes after the
    first (the ones predictable by copying). Bytes (or token ids) come from ``alphabet``."""
    if not 1 <= span <= seq_len // 2:
        raise ValueError(f"copy warm-up: span must be in 1..seq_len // 2 = {seq_len // 2}, got {span}")
    tokens = alphabet[rng.integers(len(alphabet), size=(batch_size, seq_len))]
    mask = np.zeros((batch_size, seq_len), dtype=bool)
    room = seq_len - 2 * span
    for row in range(batch_size):
        before = int(rng.integers(0, room + 1))
        copy = before + span + int(rng.integers(0, room - before + 1))
        tokens[row, copy : copy + span] = tokens[row, before : before + span]
        mask[row, copy + 1 : copy + span] = True
    return torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(mask)


def parse_copy_source(argument: str) -> tuple[int, int | None]:
    """The span (default 48) and vocabulary (default: bytes, ``None``) of ``copy[:span=N][,vocab=V]``.

    Raises:
        ValueError: anything but comma-separated ``span=N`` / ``vocab=V`` with positive ints.
    """
    values = {"span": 48, "vocab": None}
    for part in filter(None, (p.strip() for p in argument.split(","))):
        name, _, value = part.partition("=")
        if name.strip() not in values or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"copy source: expected copy, copy:span=N, copy:vocab=V or copy:span=N,vocab=V with "
                             f"positive ints, got copy:{argument}")
        values[name.strip()] = int(value)
    if values["vocab"] is not None:
        token_alphabet(values["vocab"])  # checks it
    return values["span"], values["vocab"]


class CopyStream:
    """Batches of independent copy segments: row ``b`` of each batch holds ``seq_len + 1`` bytes from
    ``copy_batch``; inputs are the first ``seq_len``, labels the next byte where it is a copied byte after the
    first (``IGNORE_INDEX`` elsewhere). The position is the generator's state, so a run resumes exactly."""

    def __init__(self, *, span: int, batch_size: int, seq_len: int, seed: int, vocab: int | None = None) -> None:
        if not 1 <= span <= (seq_len + 1) // 2:
            raise ValueError(f"copy source: span must be in 1..(seq_len + 1) // 2 = {(seq_len + 1) // 2}, got {span}")
        self.span, self.batch_size, self.seq_len = span, batch_size, seq_len
        self.alphabet = ALPHABET if vocab is None else token_alphabet(vocab)
        self.rng = np.random.default_rng([seed, 11])
        self.documents_started = 0

    def next_batch(self) -> Batch:
        tokens, mask = copy_batch(self.batch_size, self.seq_len + 1, self.span, self.rng, self.alphabet)
        self.documents_started += self.batch_size
        labels = tokens[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
        return Batch(tokens[:, :-1], labels, new_streams=True)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "documents_started": self.documents_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.documents_started = state["documents_started"]


def _open_copy_stream(argument: str, split: str, **sizes: Any) -> CopyStream:
    span, vocab = parse_copy_source(argument)
    return CopyStream(span=span, vocab=vocab, **sizes)


register_source("copy", Source(stream=_open_copy_stream,
                               help="copy[:span=N][,vocab=V], the copy warm-up: random bytes (or token ids 2..V-1) "
                                    "holding a string and its copy (copy_warmup.py)"))
