"""The copy warm-up: random bytes holding a string and its copy, the loss on the copied bytes only.

Small byte-level models learn a content-based lookup (an "induction" circuit: a head that moves each token's
predecessor forward, and a head in the next layer that matches it) abruptly after a few thousand steps of
this task, and from there the recall task or real code trains within a few hundred steps; on those alone
they did not start in 12,000 steps (experiments/recall/README.md). It is a data source of the normal training
loop, ``--data copy[:span=48]``, whose batches are independent segments (``Batch.new_streams``): a warm-up
run writes a checkpoint like any other, and the real run continues it with ``--init-from``::

    python -m experiments train --preset small --data copy --seq-len 128 --batch-size 8 --steps 6000 \
        --lr 2e-3 --warmup-steps 100 --min-lr-ratio 1 --weight-decay 0.01 --run-dir runs/warmup
    python -m experiments train --preset small --data recall --init-from runs/warmup ...
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from memorizing_transformers_pytorch.data import IGNORE_INDEX, Batch, Source, register_source

from ..recall.task import KEY_SYMBOLS, SYMBOLS

__all__ = ["copy_batch", "CopyStream", "parse_span"]


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


def parse_span(argument: str) -> int:
    """The span of ``copy[:span=N]`` (default 48).

    Raises:
        ValueError: anything but ``span=N`` with a positive int N.
    """
    if not argument:
        return 48
    name, _, value = argument.partition("=")
    if name.strip() != "span" or not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"copy source: expected copy or copy:span=N with N >= 1, got copy:{argument}")
    return int(value)


class CopyStream:
    """Batches of independent copy segments: row ``b`` of each batch holds ``seq_len + 1`` bytes from
    ``copy_batch``; inputs are the first ``seq_len``, labels the next byte where it is a copied byte after the
    first (``IGNORE_INDEX`` elsewhere). The position is the generator's state, so a run resumes exactly."""

    def __init__(self, *, span: int, batch_size: int, seq_len: int, seed: int) -> None:
        if not 1 <= span <= (seq_len + 1) // 2:
            raise ValueError(f"copy source: span must be in 1..(seq_len + 1) // 2 = {(seq_len + 1) // 2}, got {span}")
        self.span, self.batch_size, self.seq_len = span, batch_size, seq_len
        self.rng = np.random.default_rng([seed, 11])
        self.documents_started = 0

    def next_batch(self) -> Batch:
        tokens, mask = copy_batch(self.batch_size, self.seq_len + 1, self.span, self.rng)
        self.documents_started += self.batch_size
        labels = tokens[:, 1:].masked_fill(~mask[:, 1:], IGNORE_INDEX)
        return Batch(tokens[:, :-1], labels, new_streams=True)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state, "documents_started": self.documents_started}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.documents_started = state["documents_started"]


def _open(argument: str, split: str, *, batch_size: int, seq_len: int, seed: int) -> CopyStream:
    return CopyStream(span=parse_span(argument), batch_size=batch_size, seq_len=seq_len, seed=seed)


register_source("copy", Source(stream=_open, help="copy[:span=N], the copy warm-up (experiments/warmup)"))
