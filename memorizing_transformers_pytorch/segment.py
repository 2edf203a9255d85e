"""The segment API: how a model reads a stream of tokens a segment at a time, and the state it keeps.

A model reads B document streams at once. Between calls it keeps one ``StreamState``: each memorizing
layer's kNN memory, each XL layer's cache, and the part of the current segment read so far (``pending``).
``model.step(tokens, state)`` reads tokens that continue the streams, in any number (a whole document, one
segment, one generated token): it cuts them exactly where training cuts segments (every ``state.seq_len``
tokens from the start of the stream), and when a segment fills it moves into the XL cache and what leaves the
cache goes to the kNN memory. The state is updated in place, all of it, and returned for convenience::

    state = model.new_state(batch_size=1, seq_len=512)
    logits, state = model.step(prompt, state)        # reads the whole prompt, segment by segment
    logits, state = model.step(next_token, state)    # one position of work per layer, then a search

A model that can do this (``MemorizingTransformer``, the Hugging Face adapter ``hf.MemorizingHFModel``)
inherits ``StreamReader`` and defines ``extend``: run tokens that continue the current segment, and either
keep them pending or commit the segment. ``forward(x, knn_memories=..., xl_memories=...)`` is the case
"one whole segment, committed".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from torch import Tensor

from .memory import KNNMemory
from .xl_cache import XLCache

__all__ = ["StreamState", "StreamReader", "PendingSegment", "PrefixBuffer"]


class PrefixBuffer:
    """A tensor that grows along ``dim`` up to ``capacity``, for reading a segment token by token.

    The storage is allocated once, by the first ``append`` (in that tensor's dtype and on its device), and
    each ``append`` writes in place, so a token copies only its own entries, never what came before. ``filled``
    is a view of everything written. It is shared, not copied: the owner of a buffer continues it.
    """

    def __init__(self, capacity: int, *, dim: int) -> None:
        self.capacity, self.dim = capacity, dim
        self.length = 0
        self.data: Tensor | None = None

    def append(self, x: Tensor) -> Tensor:
        """Writes ``x`` after what the buffer holds and returns ``filled``."""
        if self.data is None:
            shape = list(x.shape)
            shape[self.dim] = self.capacity
            self.data = x.new_empty(shape)
        end = self.length + x.shape[self.dim]
        assert end <= self.capacity, f"{end} entries do not fit a buffer of {self.capacity}"
        self.data.narrow(self.dim, self.length, x.shape[self.dim]).copy_(x)
        self.length = end
        return self.filled

    @property
    def filled(self) -> Tensor:
        assert self.data is not None, "nothing was appended"
        return self.data.narrow(self.dim, 0, self.length)




class PendingSegment(NamedTuple):
    """The part of the current segment read so far (not yet in the XL cache or the kNN memory).

    Its buffers are allocated for the whole segment when it starts and written in place as tokens are read, so
    a token copies only its own keys and values.

    tokens: ``(B, seq_len)`` along dim 1, ``t`` filled. keys, values: per layer ``(B, Hkv, P + seq_len, Dh)``
    along dim 2: the ``P`` pairs of the layer's XL cache (0 without one), then the segment's ``t``. inputs: per
    layer with a token shift, its inputs ``(B, seq_len, dim)`` along dim 1 (None for the others).
    """

    tokens: PrefixBuffer
    keys: tuple[PrefixBuffer, ...]
    values: tuple[PrefixBuffer, ...]
    inputs: tuple[PrefixBuffer | None, ...] = ()

    def layer(self, number: int) -> tuple[PrefixBuffer, PrefixBuffer]:
        return self.keys[number - 1], self.values[number - 1]


@dataclass
class StreamState:
    """Everything a model keeps between calls for B document streams.

    seq_len: the segment length (the one the model was trained with).
    knn_memories: one ``KNNMemory`` per memorizing layer, or None (memory off).
    xl_memories: one ``XLCache`` per XL layer, or None (none yet, or a model without XL layers).
    pending: the current segment's part read so far (a ``PendingSegment``, or the model's own kind), or None
        at a segment boundary.

    The model updates it in place: after ``step`` every field describes the streams after the tokens read.
    """

    seq_len: int
    knn_memories: Sequence[KNNMemory] | None = None
    xl_memories: tuple[XLCache, ...] | None = None
    pending: Any = None

    @property
    def position(self) -> int:
        """Tokens of the current segment read so far (0 at a segment boundary)."""
        return 0 if self.pending is None else self.pending.tokens.length


class StreamReader:
    """What a model that reads segments gets from defining ``extend`` (and ``create_knn_memories``,
    ``check_inputs`` and ``config.memorizing_layers``)."""

    def extend(self, tokens: Tensor, state: StreamState, *, commit: bool, add_knn_memory: bool = True) -> Tensor:
        """Runs ``tokens (B, m)`` that continue the current segment (``state.pending`` holds its earlier part)
        and returns their logits ``(B, m, num_tokens)``.

        With ``commit`` the segment is complete: each layer's XL cache rolls and the pairs that leave it go to
        the kNN memory (after the layer has searched it), and ``state.pending`` becomes None. Otherwise the
        memories are untouched and the tokens are written into ``state.pending`` (started when None, for a
        segment of ``state.seq_len`` tokens).
        """
        raise NotImplementedError

    def new_state(self, *, batch_size: int, seq_len: int, use_knn_memory: bool = True,
                  max_memories: int | None = None) -> StreamState:
        """A fresh state for ``batch_size`` streams: empty kNN memories (of ``max_memories`` pairs each, None:
        the configured size; none with ``use_knn_memory=False`` or a model without memorizing layers), no XL
        cache, nothing pending.

        Raises:
            ValueError: ``seq_len`` is not a positive int.
        """
        if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
        knn = None
        if use_knn_memory and self.config.memorizing_layers:  # type: ignore[attr-defined]
            knn = self.create_knn_memories(batch_size=batch_size, max_memories=max_memories)  # type: ignore[attr-defined]
        return StreamState(seq_len=seq_len, knn_memories=knn)

    def step(self, tokens: Tensor, state: StreamState, *, check: bool = True) -> tuple[Tensor, StreamState]:
        """Reads ``tokens (B, m)`` that continue the streams, in segment-aligned pieces, committing each segment
        that fills; returns the logits of the last piece ``(B, <= m, num_tokens)`` and ``state`` (updated in
        place). ``check=False`` skips validating the tokens and the state (for tokens the model itself sampled,
        one at a time, after the state was checked).

        Raises:
            TypeError, ValueError: tokens or a state that do not fit the model; nothing is changed then.
        """
        if check:
            if not isinstance(state, StreamState):
                raise TypeError(f"state must be a StreamState (model.new_state), got {type(state).__name__}")
            self.check_inputs(tokens, state.knn_memories, state.xl_memories, None)  # type: ignore[attr-defined]
        logits = None
        position = 0
        while position < tokens.shape[1]:
            piece = tokens[:, position : position + state.seq_len - state.position]
            position += piece.shape[1]
            commit = state.position + piece.shape[1] == state.seq_len
            logits = self.extend(piece, state, commit=commit)
        assert logits is not None
        return logits, state
