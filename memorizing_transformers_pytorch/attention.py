"""The attention layer: multi-head attention with shared key/value heads, and in a memorizing layer kNN
attention over the layer's memory (``knn_attention``).

Shapes:
    B batch (= document streams), n queries in the segment, P earlier keys (XL cache, earlier part of the
    segment), H query heads, Hkv key/value heads, Dh head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MemorizingTransformerConfig
from .knn_attention import l2_normalize, local_attention, make_gate, memory_attention
from .masks import FlexMask
from .memory import KNNMemory
from .segment import PrefixBuffer

__all__ = ["Attention"]


class Attention(nn.Module):
    """Multi-head attention with shared key/value heads; in a memorizing layer, also over a kNN memory.

    In a memorizing layer, queries and keys are L2-normalised and scaled by a learned per-head inverse
    temperature (the paper's answer to stale keys), and ``memory_attention`` adds the retrieved memories
    through the configured gate. Without a memory it is local attention only.
    """

    def __init__(self, config: MemorizingTransformerConfig, *, memorizing: bool) -> None:
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.dim_head = c.heads, c.kv_heads, c.dim_head
        self.memorizing = memorizing
        self.num_retrieved = c.num_retrieved_memories
        self.dropout = c.attn_dropout
        self.to_q = nn.Linear(c.dim, c.heads * c.dim_head, bias=False)
        self.to_kv = nn.Linear(c.dim, 2 * c.kv_heads * c.dim_head, bias=False)
        self.to_out = nn.Linear(c.heads * c.dim_head, c.dim, bias=False)
        if memorizing:
            self.log_scale = nn.Parameter(torch.full((c.heads, 1, 1), math.log(c.knn_temperature_init)))
            self.gate = make_gate(c.knn_gate, c.heads)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor | FlexMask,
        past: tuple[Tensor, Tensor] | None = None,
        buffers: tuple[PrefixBuffer, PrefixBuffer] | None = None,
        key_input: Tensor | None = None,
        query_input: Tensor | None = None,
        memory: KNNMemory | None = None,
        memory_ok: Tensor | None = None,
        memory_offset: Tensor | None = None,
        memory_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            x: ``(B, n, dim)``, already normalised.
            attn_mask: the local mask (``masks.py``): ``(B | 1, H | 1, n, P + n)`` float, added to the local
                logits, or a ``FlexMask``.
            past: keys and values ``(B, Hkv, P, Dh)`` of the tokens before ``x`` that it may attend to (the XL
                cache), or None.
            buffers: instead of ``past``, when a segment is read a piece at a time: key and value buffers
                ``(B, Hkv, capacity, Dh)`` along dim 2 holding the ``P`` pairs before ``x`` (XL cache, then the
                earlier part of the segment). This layer's new pairs are written into them.
            key_input, query_input: ``(B, n, dim)`` what the keys / queries are projected from instead of ``x``
                (``token_shift``), or None.
            memory, memory_ok, memory_offset, memory_bias: see ``memory_attention``; memory None = off.

        Returns:
            out ``(B, n, dim)``, and the keys and values it attended to ``(B, Hkv, P + n, Dh)``: the ``P`` of
            ``past`` or ``buffers``, then the segment's (normalised in a memorizing layer), for the caller to
            cache and store (``xl_cache.write_memory``).
        """
        B, n, _ = x.shape
        H, Hkv, Dh = self.heads, self.kv_heads, self.dim_head
        q = self.to_q(x if query_input is None else query_input).view(B, n, H, Dh).transpose(1, 2)  # (B, H, n, Dh)
        # keys from key_input (token_shift) or x, values from x; two products, not views of one, which a
        # compiled layer's cached graph mishandles (torch 2.13: outputs sharing a base)
        key_weight, value_weight = self.to_kv.weight.split(Hkv * Dh)
        k = F.linear(x if key_input is None else key_input, key_weight).view(B, n, Hkv, Dh).transpose(1, 2)
        v = F.linear(x, value_weight).view(B, n, Hkv, Dh).transpose(1, 2)  # (B, Hkv, n, Dh)
        if self.memorizing:
            q, k = l2_normalize(q), l2_normalize(k)
        keys, values = k, v
        if buffers is not None:
            assert past is None
            keys, values = buffers[0].append(k), buffers[1].append(v)  # (B, Hkv, P + n, Dh) views
        elif past is not None:
            keys = torch.cat((past[0].to(k.dtype), k), dim=2)  # (B, Hkv, P + n, Dh)
            values = torch.cat((past[1].to(v.dtype), v), dim=2)
        # autocast may leave normalised queries in float32 and keys in bfloat16: attend in one dtype
        keys, values = keys.to(v.dtype), values.to(v.dtype)
        dropout = self.dropout if self.training else 0.0
        if self.memorizing and memory is not None:
            out = memory_attention(q, keys, values, attn_mask, memory, self.gate, scale=self.log_scale.exp(),
                                   num_retrieved=self.num_retrieved, memory_ok=memory_ok, memory_offset=memory_offset,
                                   memory_bias=memory_bias, dropout_p=dropout)
        else:
            scale = self.log_scale.exp() if self.memorizing else Dh**-0.5
            out = local_attention((q * scale).to(v.dtype), keys, values, attn_mask, dropout)  # (B, H, n, Dh)
        out = out.transpose(1, 2).reshape(B, n, H * Dh)
        return self.to_out(out), keys, values
