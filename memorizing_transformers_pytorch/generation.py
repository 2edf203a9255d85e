"""Generation with memory: read a long prompt a segment at a time into the memories, then sample.

The stream is cut into segments exactly as in training, and each new token runs the model's own segment code
on the partial segment (``PendingSegment``, preallocated buffers that each token is written into), so greedy
decoding equals the argmax of a teacher-forced, segment-by-segment forward pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .attention import PrefixBuffer, XLCache
from .memory import KNNMemory

__all__ = ["generate", "read_in_segments", "GenerationOutput", "PendingSegment", "sample", "reading_progress"]


class PendingSegment(NamedTuple):
    """The part of the current segment read so far during generation (not yet in XL or kNN memory).

    Its buffers are allocated for the whole segment when it starts and written in place as tokens are read, so
    a token copies only its own keys and values. The model updates it in place and returns it: continue from
    the latest one.

    tokens: ``(B, seq_len)`` along dim 1, ``t`` filled. keys, values: per layer ``(B, Hkv, P + seq_len, Dh)``
    along dim 2: the ``P`` pairs of the layer's XL cache (0 without one), then the segment's ``t``.
    """

    tokens: PrefixBuffer
    keys: tuple[PrefixBuffer, ...]
    values: tuple[PrefixBuffer, ...]

    def layer(self, number: int) -> tuple[PrefixBuffer, PrefixBuffer]:
        return self.keys[number - 1], self.values[number - 1]


class GenerationOutput(NamedTuple):
    """What ``generate`` returns; pass the memories and ``pending`` back in to continue."""

    tokens: Tensor
    knn_memories: Sequence[KNNMemory] | None
    xl_memories: tuple[XLCache, ...] | None
    pending: PendingSegment | None
    logits: Tensor | None


def sample(logits: Tensor, temperature: float, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None) -> Tensor:
    """One token per row from ``(B, V)`` logits; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def read_in_segments(model: Any, tokens: Tensor, knn_memories: Sequence[KNNMemory] | None,
                     xl_memories: Sequence[XLCache] | None, pending: Any, seq_len: int) -> tuple[Tensor, Any, Any]:
    """Feeds ``tokens (B, m)`` to ``model._extend_segment`` in segment-aligned pieces, committing each segment
    that fills; returns the logits of the last piece, the XL caches and the pending (partial) segment.

    ``model`` is a ``MemorizingTransformer`` or another model with the same ``_extend_segment`` (the Hugging
    Face adapter, ``hf.MemorizingHFModel``), whose pending segment may be of its own type, with the tokens
    read so far in a ``PrefixBuffer`` (``pending.tokens``).
    """
    logits = None
    position = 0
    while position < tokens.shape[1]:
        used = 0 if pending is None else pending.tokens.length
        piece = tokens[:, position : position + seq_len - used]
        position += piece.shape[1]
        commit = used + piece.shape[1] == seq_len
        logits, xl_memories, pending = model._extend_segment(piece, knn_memories, xl_memories, pending, commit=commit,
                                                             seq_len=seq_len)
    assert logits is not None
    return logits, xl_memories, pending


@torch.no_grad()
def generate(
    model: Any,  # a MemorizingTransformer, or another model with its _extend_segment (hf.MemorizingHFModel)
    prompt: Tensor,
    *,
    max_new_tokens: int,
    seq_len: int = 512,
    knn_memories: Sequence[KNNMemory] | None = None,
    xl_memories: Sequence[XLCache] | None = None,
    pending: PendingSegment | None = None,
    use_knn_memory: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
    on_token: Callable[[Tensor], None] | None = None,
    on_read: Callable[[int, int], None] | None = None,
) -> GenerationOutput:
    """Reads ``prompt`` into the memories, then samples ``max_new_tokens`` tokens.

    The stream is cut into segments of ``seq_len`` tokens exactly as in training
    (counted from the start of the stream, or continuing ``pending``): long prompts
    are read a segment at a time, and each new token then costs one position of
    work per layer plus one memory search per memorizing layer: its keys and
    values are written into buffers allocated when the segment started, and
    attention reads them in place. When a segment fills, it moves into the XL
    cache and what leaves that goes to kNN memory.

    Args:
        prompt: ``(B, n)`` token ids (left-pad rows of different lengths with ``pad_id``).
        max_new_tokens: tokens to generate per row.
        seq_len: the segment length the model was trained with.
        knn_memories, xl_memories, pending: state to continue from (a previous
            ``GenerationOutput``'s); fresh kNN memories are made when None. The kNN
            memories and the pending segment are updated in place: continue from
            the latest state.
        use_knn_memory: False turns the kNN memory off (memorizing layers attend
            locally and to their XL cache only, as ``forward`` with ``knn_memories=None``).
        temperature: 0 picks the argmax (greedy).
        top_k, top_p: keep the k most likely tokens / the smallest set with
            probability >= top_p before sampling.
        eos_token_id: a row that produces it stops (later tokens are ``pad_id``,
            or ``eos_token_id`` without one); generation ends when all rows stop.
        on_token: called with each new ``(B,)`` token tensor (for streaming).
        on_read: called as ``on_read(read, total)`` every 8 segments of the prompt read (progress on a long
            context); the result is the same with or without it.

    Returns:
        ``GenerationOutput(tokens (B, <= max_new_tokens), knn_memories, xl_memories,
        pending, logits (B, new, num_tokens) or None)``.
    """
    c = model.config
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if pending is not None and pending.tokens.capacity != seq_len:
        raise ValueError(f"the pending segment was read with seq_len {pending.tokens.capacity}, got seq_len {seq_len}")
    model.check_inputs(prompt, knn_memories, xl_memories, None)
    if not use_knn_memory and knn_memories is not None:
        raise ValueError("use_knn_memory=False, but knn_memories were given")
    B = prompt.shape[0]
    if knn_memories is None and c.memorizing_layers and use_knn_memory:
        knn_memories = model.create_knn_memories(batch_size=B)
    was_training = model.training
    model.eval()
    try:
        chunk = prompt.shape[1] if on_read is None else 8 * seq_len
        for start in range(0, prompt.shape[1], max(1, chunk)):
            logits, xl_memories, pending = model.read_segment(prompt[:, start : start + chunk], knn_memories,
                                                              xl_memories, pending, seq_len)
            if on_read is not None:
                on_read(min(start + chunk, prompt.shape[1]), prompt.shape[1])
        next_logits = logits[:, -1]
        new_tokens, all_logits = [], []
        done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
        filler = c.pad_id if c.pad_id is not None else eos_token_id
        for _ in range(max_new_tokens):
            if return_logits:
                all_logits.append(next_logits.float())
            token = sample(next_logits.float(), temperature, top_k, top_p, generator)
            if eos_token_id is not None:
                token = torch.where(done, torch.full_like(token, filler), token)
                done |= token == eos_token_id
            new_tokens.append(token)
            if on_token is not None:
                on_token(token)
            if eos_token_id is not None and bool(done.all()):
                break
            logits, xl_memories, pending = model.read_segment(token[:, None], knn_memories, xl_memories, pending, seq_len)
            next_logits = logits[:, -1]
    finally:
        model.train(was_training)
    tokens = torch.stack(new_tokens, dim=1) if new_tokens else prompt.new_zeros(B, 0)
    return GenerationOutput(tokens, knn_memories, xl_memories, pending,
                            torch.stack(all_logits, dim=1) if return_logits and all_logits else None)


def reading_progress(started: float, every: float = 10.0) -> Callable[[int, int], None]:
    """An ``on_read`` for ``generate``: a line on stderr at most every ``every`` seconds while a long context is
    read (and at its end, if any line was printed)."""
    last = [started, False]

    def report(read: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= every or (read == total and last[1]):
            last[0], last[1] = now, True
            print(f"[reading the context: {read:,} / {total:,} tokens ({100 * read / total:.0f}%), "
                  f"{now - started:.0f}s]", file=sys.stderr, flush=True)

    return report
