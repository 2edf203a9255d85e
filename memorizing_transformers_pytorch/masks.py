"""The local attention's mask: which keys each query of a segment may see, and the relative position bias.

A query sees the earlier tokens of its own document in the segment, itself, and the valid pairs of the XL cache
if it belongs to the document the cache holds (document 0 of the segment); never the future, another document,
or padding. The same rule comes in two forms (``attention_kernel``):

``sdpa``  a dense additive float tensor ``(B, H, m, P + n)``: the bias, and ``-inf`` where a query may not
          look. Any kernel takes it; it is the reference. It is built once per segment, in the dtype the
          layers compute in, and shared by every layer with the same XL length.
``flex``  for ``torch.nn.attention.flex_attention``: the bias as a ``score_mod`` (a lookup by distance) and the
          rule as a block mask, so no ``(B, H, m, P + n)`` tensor is built and blocks no query may see are
          skipped. It runs compiled (``torch.compile``); it has no attention dropout.

Shapes:
    B batch, m queries (the segment's tokens from ``start`` on), n tokens in the segment so far, P XL keys,
    H heads.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["ATTENTION_KERNELS", "FLEX_MIN_QUERIES", "FlexMask", "dense_mask", "flex_mask", "flex_attention"]

ATTENTION_KERNELS = ("sdpa", "flex")
# flex attention works on blocks of 128 queries: fewer queries (a token at a time in generation, short pieces)
# gain nothing from it, and each new shape compiles anew, so they take the dense mask
FLEX_MIN_QUERIES = 128


class FlexMask(NamedTuple):
    """The local mask for ``flex_attention``: ``score_mod`` adds the position bias, ``block_mask`` says where a
    query may look; ``dense()`` builds the same mask as ``dense_mask`` for code that needs it (the joint
    softmax where flex cannot return its log-sum-exp, on CPU)."""

    score_mod: Callable[..., Tensor]
    block_mask: object  # torch.nn.attention.flex_attention.BlockMask
    dense: Callable[[], Tensor]


def dense_mask(bias: Tensor, doc: Tensor, key_ok: Tensor, past_valid: Tensor | None, start: int,
               dtype: torch.dtype) -> Tensor:
    """The additive mask ``(B, H, m, P + n)``.

    Args:
        bias: ``(H, m, P + n)`` the position bias of each (query, key) pair.
        doc: ``(B, n)`` document number of each token in the segment (0: the document the XL cache holds).
        key_ok: ``(B, n)`` tokens others may attend to (not padding).
        past_valid: ``(B, P)`` valid XL pairs, or None without a cache.
        start: the first query's position in the segment.
        dtype: of the mask (the dtype the attention computes in).
    """
    n = doc.shape[1]
    positions = torch.arange(n, device=doc.device)
    causal = positions[start:, None] >= positions[None, :]  # (m, n)
    self_key = positions[start:, None] == positions[None, :]
    query_doc = doc[:, start:]
    local = causal & (query_doc[:, :, None] == doc[:, None, :]) & (key_ok[:, None, :] | self_key)  # (B, m, n)
    if past_valid is not None:
        from_past = past_valid[:, None, :] & (query_doc == 0)[:, :, None]  # (B, m, P)
        local = torch.cat((from_past, local), dim=2)
    return bias.to(dtype).unsqueeze(0).masked_fill(~local.unsqueeze(1), float("-inf"))


def flex_mask(per_distance: Tensor, doc: Tensor, key_ok: Tensor, past_valid: Tensor | None, start: int,
              dtype: torch.dtype) -> FlexMask:
    """The same rule as ``dense_mask`` for ``flex_attention``.

    Args:
        per_distance: ``(H, P + n)`` the bias at each distance ``0 .. P + n - 1`` from a query back to a key.
        doc, key_ok, past_valid, start, dtype: as in ``dense_mask`` (``dtype`` for ``dense()``).
    """
    from torch.nn.attention.flex_attention import create_block_mask

    B, n = doc.shape
    P = 0 if past_valid is None else past_valid.shape[1]
    m = n - start

    def score_mod(score: Tensor, b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return score + per_distance[h, (q + start + P - kv).clamp(min=0)].to(score.dtype)

    def mask_mod(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        query = q + start  # positions in the segment
        key = (kv - P).clamp(min=0)
        ok = (kv >= P) & (key <= query) & (doc[b, key] == doc[b, query]) & (key_ok[b, key] | (key == query))
        if past_valid is not None:
            ok = ok | ((kv < P) & past_valid[b, kv.clamp(max=P - 1)] & (doc[b, query] == 0))
        return ok

    def dense() -> Tensor:
        queries = torch.arange(start + P, n + P, device=doc.device)[:, None]
        bias = per_distance[:, (queries - torch.arange(P + n, device=doc.device)).clamp(min=0)]  # (H, m, P + n)
        return dense_mask(bias, doc, key_ok, past_valid, start, dtype)

    block_mask = create_block_mask(mask_mod, B, None, m, P + n, device=doc.device)
    return FlexMask(score_mod, block_mask, functools.cache(dense))  # built once, if a layer asks


@functools.cache
def _compiled_flex() -> Callable[..., object]:
    from torch.nn.attention.flex_attention import flex_attention as eager

    return torch.compile(eager, dynamic=False)  # (dynamic shapes hit an inductor bug on CPU)


def flex_attention(q: Tensor, keys: Tensor, values: Tensor, mask: FlexMask, *,
                   with_lse: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Attention of scaled queries ``(B, H, m, Dh)`` over ``keys``/``values`` ``(B, Hkv, P + n, Dh)`` under
    ``mask``, by a compiled ``flex_attention``; with ``with_lse`` also the log-sum-exp of each query's logits
    ``(B, H, m)`` (float32; not on CPU, where compiled flex attention returns none)."""
    from torch.nn.attention.flex_attention import AuxRequest

    out = _compiled_flex()(q, keys, values, score_mod=mask.score_mod, block_mask=mask.block_mask, scale=1.0,
                           enable_gqa=q.shape[1] != keys.shape[1],
                           return_aux=AuxRequest(lse=True) if with_lse else None)
    if with_lse:
        out, aux = out
        return out, aux.lse
    return out
