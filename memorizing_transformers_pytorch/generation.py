"""Generation with memory: read a long prompt a segment at a time into the memories, then sample.

Everything goes through the model's ``step`` (``segment.py``): the stream is cut into segments exactly as in
training, and each new token runs the model's own segment code on the partial segment (preallocated buffers
that each token is written into), so greedy decoding equals the argmax of a teacher-forced, segment-by-segment
forward pass.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .segment import StreamState

__all__ = ["generate", "GenerationOutput", "sample", "reading_progress"]


class GenerationOutput(NamedTuple):
    """What ``generate`` returns: the new tokens ``(B, <= max_new_tokens)``, the streams' state after them (pass
    it back as ``state=`` to continue), and the logits of each new token ``(B, new, num_tokens)`` or None."""

    tokens: Tensor
    state: StreamState
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


@torch.no_grad()
def generate(
    model: Any,  # a segment.StreamReader: MemorizingTransformer, or the Hugging Face adapter
    prompt: Tensor,
    *,
    max_new_tokens: int,
    seq_len: int | None = None,
    state: StreamState | None = None,
    use_knn_memory: bool = True,
    max_memories: int | None = None,
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
    (counted from the start of the stream, or continuing ``state``): long prompts
    are read a segment at a time, and each new token then costs one position of
    work per layer plus one memory search per memorizing layer: its keys and
    values are written into buffers allocated when the segment started, and
    attention reads them in place. When a segment fills, it moves into the XL
    cache and what leaves that goes to kNN memory.

    Args:
        prompt: ``(B, n)`` token ids (left-pad rows of different lengths with ``pad_id``).
        max_new_tokens: tokens to generate per row.
        seq_len: the segment length the model was trained with (None: ``state``'s, else 512).
        state: the streams to continue (a previous ``GenerationOutput``'s, or ``model.new_state``); it is
            updated in place. None: a fresh one (``model.new_state``).
        use_knn_memory, max_memories: for a fresh state: False turns the kNN memory off (memorizing layers
            attend locally and to their XL cache only, as ``forward`` with ``knn_memories=None``);
            ``max_memories`` overrides the configured memory size.
        temperature: 0 picks the argmax (greedy).
        top_k, top_p: keep the k most likely tokens / the smallest set with
            probability >= top_p before sampling.
        eos_token_id: a row that produces it stops (later tokens are ``pad_id``,
            or ``eos_token_id`` without one); generation ends when all rows stop.
        on_token: called with each new ``(B,)`` token tensor (for streaming).
        on_read: called as ``on_read(read, total)`` every 8 segments of the prompt read (progress on a long
            context); the result is the same with or without it.

    Returns:
        ``GenerationOutput(tokens (B, <= max_new_tokens), state, logits (B, new, num_tokens) or None)``.

    Raises:
        TypeError, ValueError: invalid options, tokens or state; nothing is changed then.
    """
    c = model.config
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if state is None:
        model.check_inputs(prompt, None, None, None)
        state = model.new_state(batch_size=prompt.shape[0], seq_len=512 if seq_len is None else seq_len,
                                use_knn_memory=use_knn_memory, max_memories=max_memories)
    else:
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be a StreamState (model.new_state), got {type(state).__name__}")
        if not use_knn_memory or max_memories is not None:
            raise ValueError("use_knn_memory and max_memories make a fresh state: with state=..., the state's "
                             "memories are used")
        if seq_len is not None and seq_len != state.seq_len:
            raise ValueError(f"the state was read with seq_len {state.seq_len}, got seq_len {seq_len}")
        model.check_inputs(prompt, state.knn_memories, state.xl_memories, None)
    B = prompt.shape[0]
    was_training = model.training
    model.eval()
    try:
        chunk = prompt.shape[1] if on_read is None else 8 * state.seq_len
        for start in range(0, prompt.shape[1], max(1, chunk)):
            logits, state = model.step(prompt[:, start : start + chunk], state)
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
            logits, state = model.step(token[:, None], state, check=False)  # sampled: valid ids
            next_logits = logits[:, -1]
    finally:
        model.train(was_training)
    tokens = torch.stack(new_tokens, dim=1) if new_tokens else prompt.new_zeros(B, 0)
    return GenerationOutput(tokens, state, torch.stack(all_logits, dim=1) if return_logits and all_logits else None)


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
