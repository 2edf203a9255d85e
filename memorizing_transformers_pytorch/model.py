"""The Memorizing Transformer: a decoder whose memorizing layers also attend to a kNN memory.

Shapes:
    B batch (= document streams), n tokens in the segment, P tokens of XL cache,
    H query heads, G = H // kv_heads queries per kv head, Dh head width,
    k retrieved memories per query.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MemorizingTransformerConfig
from .memory import KNNMemory, KNNMemoryList

__all__ = ["MemorizingTransformer", "XLCache", "Attention", "RelativePositionBias", "relative_position_bucket"]

IGNORE_INDEX = -100


class XLCache(NamedTuple):
    """Transformer-XL cache of one layer: the (key, value) pairs of the latest tokens.

    keys, values: ``(B, kv_heads, P, Dh)``; valid: ``(B, P)`` bool, False for padding
    and for tokens of a document that has since ended in that row.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor


class DocumentLayout(NamedTuple):
    """Where documents begin and end inside one segment, per row.

    doc: ``(B, n)`` document number within the segment; 0 continues the previous segment.
    keep: ``(B, n)`` tokens that may enter the XL cache and kNN memory: the row's
        last document, without padding.
    restart: ``(B,)`` rows whose earlier memories belong to a finished document.
    key_ok: ``(B, n)`` tokens other tokens may attend to (not padding).
    """

    doc: Tensor
    keep: Tensor
    restart: Tensor
    key_ok: Tensor


def relative_position_bucket(distance: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's causal bucketing: exact buckets for small distances, log-spaced up to ``max_distance``.

    Args:
        distance: integer tensor, query position minus key position (negative: future, bucket 0).
    """
    distance = distance.clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned per-head bias for each distance bucket, shared by all layers."""

    def __init__(self, *, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    def forward(self, query_positions: Tensor, key_positions: Tensor) -> Tensor:
        """Returns ``(H, n, K)`` for absolute positions ``(n,)`` and ``(K,)``."""
        distance = query_positions[:, None] - key_positions[None, :]
        buckets = relative_position_bucket(distance, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)


class Attention(nn.Module):
    """Multi-head attention with shared key/value heads; optionally kNN-augmented.

    In a memorizing layer, queries and keys are L2-normalised and scaled by a learned
    per-head inverse temperature; each query also retrieves its top-k (key, value)
    pairs from the kNN memory. With the ``sigmoid`` gate the memory attention has its
    own softmax and ``out = g * memory + (1 - g) * local`` with ``g = sigmoid(b_h)``;
    a query with no valid memory gets the local output unchanged. With the ``joint``
    gate a single softmax runs over the local and retrieved logits.
    """

    def __init__(self, config: MemorizingTransformerConfig, *, memorizing: bool) -> None:
        super().__init__()
        c = config
        self.heads, self.kv_heads, self.dim_head = c.heads, c.kv_heads, c.dim_head
        self.memorizing = memorizing
        self.knn_gate = c.knn_gate
        self.num_retrieved = c.num_retrieved_memories
        self.dropout = c.attn_dropout
        self.to_q = nn.Linear(c.dim, c.heads * c.dim_head, bias=False)
        self.to_kv = nn.Linear(c.dim, 2 * c.kv_heads * c.dim_head, bias=False)
        self.to_out = nn.Linear(c.heads * c.dim_head, c.dim, bias=False)
        if memorizing:
            self.log_scale = nn.Parameter(torch.full((c.heads, 1, 1), math.log(c.knn_temperature_init)))
            if c.knn_gate == "sigmoid":
                self.gate_bias = nn.Parameter(torch.zeros(c.heads, 1, 1))

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor,
        past: XLCache | None = None,
        memory: KNNMemory | None = None,
        memory_ok: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            x: ``(B, n, dim)``, already normalised.
            attn_mask: ``(B | 1, H | 1, n, P + n)`` float, added to the local logits
                (relative position bias, ``-inf`` where attention is not allowed).
            past: this layer's XL cache (P tokens) or None.
            memory: this layer's kNN memory, searched but not written here.
            memory_ok: ``(B, n)`` bool, queries allowed to read the memory.

        Returns:
            out ``(B, n, dim)``, and the segment's keys and values ``(B, kv_heads, n, Dh)``
            (normalised in a memorizing layer), for the caller to cache and store.
        """
        B, n, _ = x.shape
        H, Hkv, Dh = self.heads, self.kv_heads, self.dim_head
        q = self.to_q(x).view(B, n, H, Dh).transpose(1, 2)  # (B, H, n, Dh)
        k, v = self.to_kv(x).view(B, n, 2, Hkv, Dh).permute(2, 0, 3, 1, 4)  # 2 x (B, Hkv, n, Dh)
        if self.memorizing:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
            q_scaled = q * self.log_scale.exp()
        else:
            q_scaled = q * Dh**-0.5
        if past is not None:
            keys = torch.cat((past.keys.to(k.dtype), k), dim=2)  # (B, Hkv, P + n, Dh)
            values = torch.cat((past.values.to(v.dtype), v), dim=2)
        else:
            keys, values = k, v

        retrieved = None
        if self.memorizing and memory is not None:
            retrieved = self._retrieve(q, memory, memory_ok)
        dropout = self.dropout if self.training else 0.0
        if retrieved is not None and self.knn_gate == "joint":
            out = self._joint_attention(q_scaled, keys, values, attn_mask, *retrieved, dropout)
        else:
            out = F.scaled_dot_product_attention(
                q_scaled, keys, values, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout, scale=1.0,
                enable_gqa=H != Hkv,
            )  # (B, H, n, Dh)
            if retrieved is not None:
                mem_keys, mem_values, mem_mask = retrieved
                logits = torch.einsum("bhnd,bhnkd->bhnk", q_scaled, mem_keys)
                logits = logits.masked_fill(~mem_mask, float("-inf"))
                has_memory = mem_mask.any(dim=-1, keepdim=True)  # (B, H, n, 1)
                weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
                weights = F.dropout(weights, p=dropout, training=self.training)
                mem_out = torch.einsum("bhnk,bhnkd->bhnd", weights, mem_values)
                gate = torch.sigmoid(self.gate_bias) * has_memory
                out = out + gate * (mem_out - out)
        out = out.transpose(1, 2).reshape(B, n, H * Dh)
        return self.to_out(out), k, v

    def _retrieve(self, q: Tensor, memory: KNNMemory, memory_ok: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Top-k pairs for each (unscaled, normalised) query: 2 x ``(B, H, n, k, Dh)`` and mask ``(B, H, n, k)``."""
        B, H, n, Dh = q.shape
        G = H // self.kv_heads
        queries = q.detach().reshape(B, self.kv_heads, G * n, Dh)  # heads sharing a kv head search together
        pairs, mask = memory.search(queries if self.kv_heads > 1 else queries[:, 0], self.num_retrieved)
        pairs = pairs.to(q.dtype).view(B, H, n, self.num_retrieved, 2, Dh)
        mask = mask.view(B, H, n, self.num_retrieved)
        if memory_ok is not None:
            mask = mask & memory_ok[:, None, :, None]
        return pairs[..., 0, :], pairs[..., 1, :], mask

    def _joint_attention(
        self, q_scaled: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor,
        mem_keys: Tensor, mem_values: Tensor, mem_mask: Tensor, dropout: float,
    ) -> Tensor:
        """One softmax over retrieved and local logits (the reference implementation's choice)."""
        B, H, n, Dh = q_scaled.shape
        G = H // self.kv_heads
        keys = keys.repeat_interleave(G, dim=1)
        values = values.repeat_interleave(G, dim=1)
        local_logits = q_scaled @ keys.transpose(-1, -2) + attn_mask  # (B, H, n, P + n)
        mem_logits = torch.einsum("bhnd,bhnkd->bhnk", q_scaled, mem_keys).masked_fill(~mem_mask, float("-inf"))
        weights = torch.softmax(torch.cat((mem_logits, local_logits), dim=-1), dim=-1)
        weights = F.dropout(weights, p=dropout, training=self.training)
        k = mem_keys.shape[-2]
        return torch.einsum("bhnk,bhnkd->bhnd", weights[..., :k], mem_values) + weights[..., k:] @ values


class FeedForward(nn.Sequential):
    def __init__(self, config: MemorizingTransformerConfig) -> None:
        hidden = config.dim * config.ff_mult
        super().__init__(
            nn.Linear(config.dim, hidden),
            nn.GELU(),
            nn.Dropout(config.ff_dropout),
            nn.Linear(hidden, config.dim),
        )


class Block(nn.Module):
    """Pre-norm residual block: attention, then feed-forward."""

    def __init__(self, config: MemorizingTransformerConfig, *, memorizing: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim)
        self.attn = Attention(config, memorizing=memorizing)
        self.ff_norm = nn.LayerNorm(config.dim)
        self.ff = FeedForward(config)

    def forward(self, x: Tensor, **attention_args: Any) -> tuple[Tensor, Tensor, Tensor]:
        out, k, v = self.attn(self.attn_norm(x), **attention_args)
        x = x + out
        x = x + self.ff(self.ff_norm(x))
        return x, k, v


class MemorizingTransformer(nn.Module):
    """Decoder-only transformer with kNN memory layers and a Transformer-XL cache.

    Build it from a config or from the config's fields as keyword arguments::

        MemorizingTransformer(num_tokens=256, dim=256, depth=4, memorizing_layers=(3,))
        MemorizingTransformer(MemorizingTransformerConfig(num_tokens=256))

    Raises:
        TypeError, ValueError: for an invalid configuration (see ``MemorizingTransformerConfig``).
    """

    def __init__(self, config: MemorizingTransformerConfig | None = None, **config_fields: Any) -> None:
        super().__init__()
        if config is None:
            try:
                config = MemorizingTransformerConfig(**config_fields)
            except TypeError as error:
                if "unexpected keyword" in str(error) or "missing" in str(error):
                    raise TypeError(f"MemorizingTransformer: {error}") from None
                raise
        elif config_fields:
            raise TypeError("pass either a config or keyword arguments, not both")
        if not isinstance(config, MemorizingTransformerConfig):
            raise TypeError(f"config must be a MemorizingTransformerConfig, got {type(config).__name__}")
        self.config = config
        c = config
        assert c.memorizing_layers is not None and c.xl_memory_layers is not None
        self.token_emb = nn.Embedding(c.num_tokens, c.dim)
        self.rel_pos = RelativePositionBias(heads=c.heads, num_buckets=c.rel_pos_num_buckets,
                                            max_distance=c.rel_pos_max_distance)
        self.layers = nn.ModuleList(
            Block(c, memorizing=layer in c.memorizing_layers) for layer in range(1, c.depth + 1)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.to_logits = nn.Linear(c.dim, c.num_tokens, bias=False)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    # ----------------------------------------------------------- memories
    def create_knn_memories(self, *, batch_size: int) -> KNNMemoryList:
        """One empty ``KNNMemory`` per memorizing layer, with ``batch_size`` streams each."""
        c = self.config
        return KNNMemoryList(
            KNNMemory(dim=c.dim_head, max_memories=c.max_knn_memories, num_indices=batch_size, heads=c.kv_heads)
            for _ in c.memorizing_layers
        )

    # ------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        knn_memories: Sequence[KNNMemory] | None = None,
        xl_memories: Sequence[XLCache] | None = None,
        labels: Tensor | None = None,
        add_knn_memory: bool = True,
    ) -> tuple[Tensor, tuple[XLCache, ...] | None]:
        """Read one segment of each document stream.

        Args:
            x: ``(B, n)`` token ids; row ``b`` continues the document stream of row
                ``b`` in the previous call.
            knn_memories: from ``create_knn_memories(batch_size=B)``; searched, then
                written with the pairs leaving the XL window. None: memory off
                (memorizing layers attend locally only).
            xl_memories: the ``new_xl_memories`` of the previous call, or None.
            labels: ``(B, n)`` targets; ``-100`` and ``pad_id`` are ignored.
            add_knn_memory: write this segment's pairs to the kNN memories.

        Returns:
            ``(logits (B, n, num_tokens), new_xl_memories)``, or ``(loss, new_xl_memories)``
            when labels are given. ``new_xl_memories`` is a tuple with one ``XLCache``
            per XL layer, or None when the model has no XL layers.

        Raises:
            TypeError, ValueError: invalid inputs; no memory is changed then.
        """
        c = self.config
        self._check_inputs(x, knn_memories, xl_memories, labels)
        layout = self._document_layout(x)
        memories = dict(zip(c.memorizing_layers, knn_memories)) if knn_memories is not None else {}
        pasts = dict(zip(c.xl_memory_layers, xl_memories)) if xl_memories else {}
        n = x.shape[1]
        local_mask = self._attention_mask(layout, None, n)  # shared by layers without an XL cache
        h = self.token_emb(x)
        new_xl = []
        for number, block in enumerate(self.layers, start=1):
            past = pasts.get(number)
            attn_mask = local_mask if past is None else self._attention_mask(layout, past, n)
            memory = memories.get(number)
            h, k, v = block(h, attn_mask=attn_mask, past=past, memory=memory, memory_ok=layout.doc == 0)
            new_cache = self._update_memories(number, k, v, past, layout, memory, add_knn_memory)
            if new_cache is not None:
                new_xl.append(new_cache)
        logits = self.to_logits(self.norm(h))
        new_xl_memories = tuple(new_xl) if c.xl_memory_layers else None
        if labels is None:
            return logits, new_xl_memories
        if c.pad_id is not None:
            labels = labels.masked_fill(labels == c.pad_id, IGNORE_INDEX)
        loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
        return loss, new_xl_memories

    def _document_layout(self, x: Tensor) -> DocumentLayout:
        c = self.config
        starts = torch.zeros_like(x, dtype=torch.bool)
        ends_segment = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if c.clear_memories_on_sos_token_id is not None:
            starts |= x == c.clear_memories_on_sos_token_id
        if c.clear_memories_on_eos_token_id is not None:
            is_eos = x == c.clear_memories_on_eos_token_id
            starts[:, 1:] |= is_eos[:, :-1]  # the token after an eos starts a document
            ends_segment = is_eos[:, -1]
        doc = starts.long().cumsum(dim=1)
        last_doc = doc[:, -1] + ends_segment.long()
        key_ok = x != c.pad_id if c.pad_id is not None else torch.ones_like(starts)
        keep = (doc == last_doc[:, None]) & key_ok
        return DocumentLayout(doc=doc, keep=keep, restart=last_doc > 0, key_ok=key_ok)

    def _attention_mask(self, layout: DocumentLayout, past: XLCache | None, n: int) -> Tensor:
        """Additive mask ``(B, H, n, P + n)``: relative position bias, ``-inf`` where not allowed."""
        doc, key_ok = layout.doc, layout.key_ok
        device = doc.device
        P = 0 if past is None else past.keys.shape[2]
        positions = torch.arange(P + n, device=device)
        bias = self.rel_pos(positions[P:], positions)  # (H, n, P + n)
        causal = positions[P:, None] >= positions[None, P:]  # (n, n)
        self_key = torch.eye(n, dtype=torch.bool, device=device)
        local = causal & (doc[:, :, None] == doc[:, None, :]) & (key_ok[:, None, :] | self_key)  # (B, n, n)
        if past is not None:
            from_past = past.valid[:, None, :] & (doc == 0)[:, :, None]  # (B, n, P)
            local = torch.cat((from_past, local), dim=2)
        return bias.unsqueeze(0).masked_fill(~local.unsqueeze(1), float("-inf"))

    def _update_memories(
        self, number: int, k: Tensor, v: Tensor, past: XLCache | None, layout: DocumentLayout,
        memory: KNNMemory | None, add_knn_memory: bool,
    ) -> XLCache | None:
        """After layer ``number`` has read its memories: roll its XL cache, write what leaves it to kNN memory."""
        c = self.config
        k, v = k.detach(), v.detach()
        valid = layout.keep
        if past is not None:
            k = torch.cat((past.keys.to(k.dtype), k), dim=2)
            v = torch.cat((past.values.to(v.dtype), v), dim=2)
            valid = torch.cat((past.valid & ~layout.restart[:, None], valid), dim=1)
        window = c.xl_max_memories if number in c.xl_memory_layers else 0
        leaving = max(0, k.shape[2] - window)
        if memory is not None:
            if layout.restart.any():
                memory.clear(layout.restart)
            if add_knn_memory and leaving > 0:
                pairs = torch.stack((k[:, :, :leaving], v[:, :, :leaving]), dim=-2)  # (B, Hkv, leaving, 2, Dh)
                memory.add(pairs if c.kv_heads > 1 else pairs[:, 0], mask=valid[:, :leaving])
        if window == 0:
            return None
        return XLCache(k[:, :, leaving:], v[:, :, leaving:], valid[:, leaving:])

    # -------------------------------------------------------- validation
    def _check_inputs(
        self, x: Tensor, knn_memories: Sequence[KNNMemory] | None, xl_memories: Sequence[XLCache] | None,
        labels: Tensor | None,
    ) -> None:
        c = self.config
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor of token ids, got {type(x).__name__}")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise TypeError(f"x must hold integer token ids, got dtype {x.dtype}")
        if x.ndim != 2 or x.shape[1] == 0:
            raise ValueError(f"x must have shape (batch, seq_len) with seq_len >= 1, got {tuple(x.shape)}")
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c.num_tokens):
            raise ValueError(
                f"token ids must be in [0, {c.num_tokens}), got values from {int(x.min())} to {int(x.max())}"
            )
        B = x.shape[0]
        if labels is not None:
            if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
                raise TypeError("labels must be an integer tensor")
            if labels.shape != x.shape:
                raise ValueError(f"labels must have the shape of x {tuple(x.shape)}, got {tuple(labels.shape)}")
            bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= c.num_tokens))
            if bad.any():
                raise ValueError(f"labels must be in [0, {c.num_tokens}) or {IGNORE_INDEX}, got {labels[bad][0].item()}")
        if knn_memories is not None:
            if len(knn_memories) != len(c.memorizing_layers):
                raise ValueError(
                    f"expected {len(c.memorizing_layers)} kNN memories (one per memorizing layer), got {len(knn_memories)}"
                )
            for memory in knn_memories:
                if not isinstance(memory, KNNMemory):
                    raise TypeError(f"knn_memories must hold KNNMemory objects, got {type(memory).__name__}")
                if memory.num_indices != B:
                    raise ValueError(
                        f"the kNN memories were created for batch size {memory.num_indices}, but x has batch size {B}"
                    )
                if memory.dim != c.dim_head or memory.heads != c.kv_heads:
                    raise ValueError(
                        f"kNN memory must have dim={c.dim_head} and heads={c.kv_heads}, "
                        f"got dim={memory.dim} and heads={memory.heads}"
                    )
        if xl_memories is not None:
            if len(xl_memories) != len(c.xl_memory_layers):
                raise ValueError(f"expected {len(c.xl_memory_layers)} XL memories, got {len(xl_memories)}")
            for cache in xl_memories:
                if not isinstance(cache, XLCache):
                    raise TypeError(f"xl_memories must hold XLCache tuples, got {type(cache).__name__}")
                expected = (B, c.kv_heads, cache.keys.shape[2], c.dim_head)
                if (cache.keys.shape != expected or cache.values.shape != expected
                        or cache.valid.shape != (B, cache.keys.shape[2]) or cache.keys.shape[2] > c.xl_max_memories):
                    raise ValueError(
                        f"XL memories must have keys/values of shape (batch={B}, {c.kv_heads}, <= {c.xl_max_memories}, "
                        f"{c.dim_head}), got {tuple(cache.keys.shape)}"
                    )
