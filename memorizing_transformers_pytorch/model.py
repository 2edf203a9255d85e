"""The Memorizing Transformer: a decoder whose memorizing layers also attend to a kNN memory.

Shapes:
    B batch (= document streams), n tokens in the segment, P tokens of XL cache,
    H query heads, G = H // kv_heads queries per kv head, Dh head width,
    k retrieved memories per query.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MemorizingTransformerConfig
from .memory import KNNMemory, KNNMemoryList

__all__ = ["MemorizingTransformer", "XLCache", "GenerationOutput", "PendingSegment", "Attention", "RelativePositionBias", "relative_position_bucket"]

IGNORE_INDEX = -100


class XLCache(NamedTuple):
    """Transformer-XL cache of one layer: the (key, value) pairs of the latest tokens.

    keys, values: ``(B, kv_heads, P, Dh)``; valid: ``(B, P)`` bool, False for padding
    and for tokens of a document that has since ended in that row.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor


def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> Tensor:
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


class GenerationOutput(NamedTuple):
    """What ``generate`` returns; pass the memories and ``pending`` back in to continue."""

    tokens: Tensor
    knn_memories: Sequence[KNNMemory] | None
    xl_memories: tuple[XLCache, ...] | None
    pending: PendingSegment | None
    logits: Tensor | None


class PendingSegment(NamedTuple):
    """The part of the current segment read so far during generation (not yet in XL or kNN memory).

    tokens: ``(B, t)``; keys, values: per layer ``(B, kv_heads, t, Dh)``.
    """

    tokens: Tensor
    keys: tuple[Tensor, ...]
    values: tuple[Tensor, ...]

    def layer(self, number: int) -> tuple[Tensor, Tensor]:
        return self.keys[number - 1], self.values[number - 1]


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

    @torch.no_grad()
    def focus_on_previous_tokens(self, count: int, strength: float = 10.0) -> None:
        """Head ``h < count``: bias ``strength`` at distance ``h + 1``, 0 at every other distance.

        Distances below ``num_buckets // 2`` have a bucket each, so the bias picks exactly that token.
        """
        for head in range(count):
            self.embedding.weight[:, head] = 0.0
            self.embedding.weight[head + 1, head] = strength

    def forward(self, num_queries: int, num_keys: int) -> Tensor:
        """Returns ``(H, num_queries, num_keys)`` for keys at positions ``0 .. num_keys - 1`` and queries at
        the last ``num_queries`` of them.

        The bias depends only on the distance, so it is looked up once per distance and laid out with
        ``unfold`` (row ``i`` is a window of the per-distance vector). Its backward sums each distance's
        gradient along a diagonal, which is several times cheaper on CPU than an embedding backward over
        every (query, key) pair.
        """
        first_query = num_keys - num_queries
        device = self.embedding.weight.device
        # distances from the largest (last query, first key) down to the smallest (first query, last key)
        distances = torch.arange(num_keys - 1, first_query - num_keys, -1, device=device)
        per_distance = self.embedding(relative_position_bucket(distances, self.num_buckets, self.max_distance)).t()
        # window s covers distances num_keys - 1 - s downwards: it is the row of query num_queries - 1 - s
        return per_distance.unfold(1, num_keys, 1).flip(1)


class Attention(nn.Module):
    """Multi-head attention with shared key/value heads; optionally kNN-augmented.

    In a memorizing layer, queries and keys are L2-normalised and scaled by a learned
    per-head inverse temperature; each query also retrieves its top-k (key, value)
    pairs from the kNN memory. With the ``sigmoid`` gate the memory attention has its
    own softmax and ``out = g * memory + (1 - g) * local`` with ``g = sigmoid(b_h)``;
    a query with no valid memory gets the local output unchanged. With the ``joint``
    gate a single softmax runs over the local and retrieved logits.

    The ``mlp`` gate (the seed's TODO: gating from the number of retrieved memories
    and their positions, through a continuous MLP representation) is the joint
    softmax with a learned bias on each retrieved memory's logit::

        logit_j = s_h * cos(q, k_j) + f_h(log(1 + d_j))

    where ``d_j`` is the distance in tokens from the query back to memory ``j`` (the
    memory stores each pair's position in its stream) and ``f`` is a two-layer MLP
    (1 -> 32 -> heads, last layer zero-initialised, so training starts from the
    joint gate). The share of attention that goes to memory is
    ``sum_j exp(logit_j) / (sum_j exp(logit_j) + sum_local exp(logit))``: it grows
    with the number of valid memories retrieved and with how much ``f`` favours
    their distances; with no valid memory it is 0 and the output is exactly local
    attention.
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
            elif c.knn_gate == "mlp":
                self.distance_mlp = nn.Sequential(nn.Linear(1, 32), nn.GELU(), nn.Linear(32, c.heads))
                nn.init.zeros_(self.distance_mlp[2].weight)
                nn.init.zeros_(self.distance_mlp[2].bias)

    def forward(
        self,
        x: Tensor,
        *,
        attn_mask: Tensor,
        past: tuple[Tensor, Tensor] | None = None,
        memory: KNNMemory | None = None,
        memory_ok: Tensor | None = None,
        memory_offset: Tensor | None = None,
        memory_bias: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        Args:
            x: ``(B, n, dim)``, already normalised.
            attn_mask: ``(B | 1, H | 1, n, P + n)`` float, added to the local logits
                (relative position bias, ``-inf`` where attention is not allowed).
            past: keys and values ``(B, kv_heads, P, Dh)`` of the tokens before ``x`` that
                it may attend to (XL cache, then the earlier part of the segment), or None.
            memory: this layer's kNN memory, searched but not written here.
            memory_ok: ``(B, n)`` bool, queries allowed to read the memory.
            memory_offset: ``(B, n)`` long, tokens between each query and the newest
                pair in the memory, plus one (used by the ``mlp`` gate).
            memory_bias: ``(H,)`` added to every retrieved logit (``memory_rel_pos_bias``), or None.

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
            keys = torch.cat((past[0].to(k.dtype), k), dim=2)  # (B, Hkv, P + n, Dh)
            values = torch.cat((past[1].to(v.dtype), v), dim=2)
        else:
            keys, values = k, v

        # autocast may leave normalised queries in float32 and keys in bfloat16: attend in one dtype
        q_scaled, keys, values = q_scaled.to(v.dtype), keys.to(v.dtype), values.to(v.dtype)
        retrieved = None
        if self.memorizing and memory is not None:
            retrieved = self._retrieve(q, memory, memory_ok, memory_offset, memory_bias, v.dtype)
        dropout = self.dropout if self.training else 0.0
        if retrieved is not None and self.knn_gate in ("joint", "mlp"):
            out = self._joint_attention(q_scaled, keys, values, attn_mask, *retrieved, dropout)
        else:
            out = F.scaled_dot_product_attention(
                q_scaled, keys, values, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout, scale=1.0,
                enable_gqa=H != Hkv,
            )  # (B, H, n, Dh)
            if retrieved is not None:
                mem_keys, mem_values, mem_mask, _ = retrieved
                logits = torch.einsum("bhnd,bhnkd->bhnk", q_scaled, mem_keys).masked_fill(~mem_mask, float("-inf"))
                has_memory = mem_mask.any(dim=-1, keepdim=True)  # (B, H, n, 1)
                weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)
                weights = F.dropout(weights, p=dropout, training=self.training)
                mem_out = torch.einsum("bhnk,bhnkd->bhnd", weights, mem_values)
                gate = torch.sigmoid(self.gate_bias) * has_memory
                out = out + gate * (mem_out - out)
        out = out.transpose(1, 2).reshape(B, n, H * Dh)
        return self.to_out(out), k, v

    def _retrieve(self, q: Tensor, memory: KNNMemory, memory_ok: Tensor | None, memory_offset: Tensor | None,
                  memory_bias: Tensor | None, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Top-k pairs for each (unscaled, normalised) query: 2 x ``(B, H, n, k, Dh)`` in ``dtype``,
        the mask ``(B, H, n, k)``, and the logit biases of the retrieved pairs (the ``mlp`` gate's
        ``(B, H, n, k)`` plus ``memory_bias`` per head), or None when there are none."""
        B, H, n, Dh = q.shape
        G = H // self.kv_heads
        k = self.num_retrieved
        queries = q.detach().reshape(B, self.kv_heads, G * n, Dh)  # heads sharing a kv head search together
        queries = queries if self.kv_heads > 1 else queries[:, 0]
        bias = None
        if self.knn_gate == "mlp":
            pairs, mask, ages = memory.search(queries, k, with_ages=True)
            offset = memory_offset if memory_offset is not None else torch.ones(B, n, dtype=torch.long, device=q.device)
            distance = ages.to(q.device).view(B, H, n, k) + offset[:, None, :, None].to(q.device)
            first, act, last = self.distance_mlp
            hidden = act(first(torch.log1p(distance.float()).unsqueeze(-1) / 8))  # (B, H, n, k, 32)
            # head h's own output of the last layer only
            bias = (torch.einsum("bhnkj,hj->bhnk", hidden, last.weight) + last.bias.view(1, H, 1, 1)).to(dtype)
        else:
            pairs, mask = memory.search(queries, k)
        if memory_bias is not None:
            per_head = memory_bias.to(dtype).view(1, H, 1, 1)
            bias = per_head if bias is None else bias + per_head
        pairs = pairs.to(device=q.device, dtype=dtype).view(B, H, n, k, 2, Dh)
        mask = mask.view(B, H, n, k).to(q.device)
        if memory_ok is not None:
            mask = mask & memory_ok[:, None, :, None]
        return pairs[..., 0, :], pairs[..., 1, :], mask, bias

    def _joint_attention(
        self, q_scaled: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor,
        mem_keys: Tensor, mem_values: Tensor, mem_mask: Tensor, mem_bias: Tensor | None, dropout: float,
    ) -> Tensor:
        """One softmax over retrieved and local logits (the reference implementation's choice),
        with the ``mlp`` gate's distance bias and ``memory_rel_pos_bias`` added to the retrieved logits."""
        B, H, n, Dh = q_scaled.shape
        G = H // self.kv_heads
        keys = keys.repeat_interleave(G, dim=1)
        values = values.repeat_interleave(G, dim=1)
        local_logits = q_scaled @ keys.transpose(-1, -2) + attn_mask  # (B, H, n, P + n)
        mem_logits = torch.einsum("bhnd,bhnkd->bhnk", q_scaled, mem_keys)
        if mem_bias is not None:
            mem_logits = mem_logits + mem_bias
        mem_logits = mem_logits.masked_fill(~mem_mask, float("-inf"))
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
        self.rel_pos.focus_on_previous_tokens(c.previous_token_heads)
        self.layers = nn.ModuleList(
            Block(c, memorizing=layer in c.memorizing_layers) for layer in range(1, c.depth + 1)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.to_logits = nn.Linear(c.dim, c.num_tokens, bias=False)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    # ----------------------------------------------------------- memories
    def create_knn_memories(self, *, batch_size: int, max_memories: int | None = None) -> KNNMemoryList:
        """One empty ``KNNMemory`` per memorizing layer, with ``batch_size`` streams each.

        ``max_memories`` overrides the configured capacity (e.g. to evaluate with a
        larger memory than in training).
        """
        c = self.config
        size = c.max_knn_memories if max_memories is None else max_memories
        return KNNMemoryList(
            KNNMemory(dim=c.dim_head, max_memories=size, num_indices=batch_size, heads=c.kv_heads, index=c.knn_index,
                      ivf_lists=c.knn_ivf_lists, ivf_probe=c.knn_ivf_probe)
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
        self._check_inputs(x, knn_memories, xl_memories, labels)
        logits, new_xl_memories, _ = self._extend_segment(x, knn_memories, xl_memories, None, commit=True,
                                                          add_knn_memory=add_knn_memory)
        if labels is None:
            return logits, new_xl_memories
        if self.config.pad_id is not None:
            labels = labels.masked_fill(labels == self.config.pad_id, IGNORE_INDEX)
        loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
        return loss, new_xl_memories

    def _extend_segment(
        self, x: Tensor, knn_memories: Sequence[KNNMemory] | None, xl_memories: Sequence[XLCache] | None,
        pending: PendingSegment | None, *, commit: bool, add_knn_memory: bool = True,
    ) -> tuple[Tensor, tuple[XLCache, ...] | None, PendingSegment | None]:
        """Runs tokens ``x`` that continue the current segment (``pending`` holds its earlier part).

        With ``commit`` the segment is complete: each layer's XL cache rolls and the
        pairs that leave it go to the kNN memory (after the layer searched it).
        Otherwise memories are untouched and the grown segment is returned as the
        new pending segment. ``forward`` is the case ``pending=None, commit=True``.

        Returns:
            logits ``(B, m, num_tokens)`` for the new tokens, the XL caches (new ones
            when committed), and the pending segment (None when committed).
        """
        c = self.config
        start = 0 if pending is None else pending.tokens.shape[1]
        tokens = x if pending is None else torch.cat((pending.tokens, x), dim=1)
        layout = self._document_layout(tokens)
        memories = dict(zip(c.memorizing_layers, knn_memories)) if knn_memories is not None else {}
        pasts = dict(zip(c.xl_memory_layers, xl_memories)) if xl_memories else {}
        memory_ok = layout.doc[:, start:] == 0
        masks: dict[int, Tensor] = {}  # by XL length: every XL cache covers the same tokens
        h = self.token_emb(x)
        new_xl, pending_keys, pending_values = [], [], []
        for number, block in enumerate(self.layers, start=1):
            xl = pasts.get(number)
            P = 0 if xl is None else xl.keys.shape[2]
            if P not in masks:
                masks[P] = self._attention_mask(layout, xl, start)
            past = None
            if xl is not None or pending is not None:
                parts = ([xl] if xl is not None else []) + ([pending.layer(number)] if pending is not None else [])
                past = (torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2))
            memory_offset = None
            if number in memories and c.knn_gate == "mlp":
                # tokens from the newest memory to each query: the valid XL cache, then the segment so far
                in_cache = xl.valid.sum(dim=1, keepdim=True) if xl is not None else 0
                steps = torch.arange(start + 1, start + x.shape[1] + 1, device=x.device)
                memory_offset = in_cache + steps.expand(x.shape[0], -1)
            memory_bias = self.rel_pos.embedding.weight[-1] if number in memories and c.memory_rel_pos_bias else None
            h, k, v = block(h, attn_mask=masks[P], past=past, memory=memories.get(number), memory_ok=memory_ok,
                            memory_offset=memory_offset, memory_bias=memory_bias)
            if pending is not None:
                earlier_k, earlier_v = pending.layer(number)
                k, v = torch.cat((earlier_k, k.detach()), dim=2), torch.cat((earlier_v, v.detach()), dim=2)
            if commit:
                new_cache = self._update_memories(number, k, v, xl, layout, memories.get(number), add_knn_memory)
                if new_cache is not None:
                    new_xl.append(new_cache)
            else:
                pending_keys.append(k.detach())
                pending_values.append(v.detach())
        logits = self.to_logits(self.norm(h))
        if not commit:
            xl_out = tuple(xl_memories) if xl_memories else None
            return logits, xl_out, PendingSegment(tokens, tuple(pending_keys), tuple(pending_values))
        return logits, (tuple(new_xl) if c.xl_memory_layers else None), None

    # --------------------------------------------------------- generation
    @torch.no_grad()
    def generate(
        self,
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
    ) -> GenerationOutput:
        """Reads ``prompt`` into the memories, then samples ``max_new_tokens`` tokens.

        The stream is cut into segments of ``seq_len`` tokens exactly as in training
        (counted from the start of the stream, or continuing ``pending``): long prompts
        are read a segment at a time, and each new token then costs one position of
        work per layer plus one memory search per memorizing layer. When a segment
        fills, it moves into the XL cache and what leaves that goes to kNN memory.

        Args:
            prompt: ``(B, n)`` token ids (left-pad rows of different lengths with ``pad_id``).
            max_new_tokens: tokens to generate per row.
            seq_len: the segment length the model was trained with.
            knn_memories, xl_memories, pending: state to continue from (a previous
                ``GenerationOutput``'s); fresh kNN memories are made when None.
            use_knn_memory: False turns the kNN memory off (memorizing layers attend
                locally and to their XL cache only, as ``forward`` with ``knn_memories=None``).
            temperature: 0 picks the argmax (greedy).
            top_k, top_p: keep the k most likely tokens / the smallest set with
                probability >= top_p before sampling.
            eos_token_id: a row that produces it stops (later tokens are ``pad_id``,
                or ``eos_token_id`` without one); generation ends when all rows stop.
            on_token: called with each new ``(B,)`` token tensor (for streaming).

        Returns:
            ``GenerationOutput(tokens (B, <= max_new_tokens), knn_memories, xl_memories,
            pending, logits (B, new, num_tokens) or None)``.
        """
        c = self.config
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
        if pending is not None and pending.tokens.shape[1] >= seq_len:
            raise ValueError(f"the pending segment holds {pending.tokens.shape[1]} tokens, seq_len is {seq_len}")
        self._check_inputs(prompt, knn_memories, xl_memories, None)
        if not use_knn_memory and knn_memories is not None:
            raise ValueError("use_knn_memory=False, but knn_memories were given")
        B = prompt.shape[0]
        if knn_memories is None and c.memorizing_layers and use_knn_memory:
            knn_memories = self.create_knn_memories(batch_size=B)
        was_training = self.training
        self.eval()
        try:
            logits, xl_memories, pending = self._read(prompt, knn_memories, xl_memories, pending, seq_len)
            next_logits = logits[:, -1]
            new_tokens, all_logits = [], []
            done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
            filler = c.pad_id if c.pad_id is not None else eos_token_id
            for _ in range(max_new_tokens):
                if return_logits:
                    all_logits.append(next_logits.float())
                token = _sample(next_logits.float(), temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    token = torch.where(done, torch.full_like(token, filler), token)
                    done |= token == eos_token_id
                new_tokens.append(token)
                if on_token is not None:
                    on_token(token)
                if eos_token_id is not None and bool(done.all()):
                    break
                logits, xl_memories, pending = self._read(token[:, None], knn_memories, xl_memories, pending, seq_len)
                next_logits = logits[:, -1]
        finally:
            self.train(was_training)
        tokens = torch.stack(new_tokens, dim=1) if new_tokens else prompt.new_zeros(B, 0)
        return GenerationOutput(tokens, knn_memories, xl_memories, pending,
                                torch.stack(all_logits, dim=1) if return_logits and all_logits else None)

    def _read(
        self, tokens: Tensor, knn_memories: Sequence[KNNMemory] | None, xl_memories: Sequence[XLCache] | None,
        pending: PendingSegment | None, seq_len: int,
    ) -> tuple[Tensor, tuple[XLCache, ...] | None, PendingSegment | None]:
        """Feeds tokens through segment-aligned pieces; returns the logits of the last piece."""
        logits = None
        position = 0
        while position < tokens.shape[1]:
            used = 0 if pending is None else pending.tokens.shape[1]
            piece = tokens[:, position : position + seq_len - used]
            position += piece.shape[1]
            commit = used + piece.shape[1] == seq_len
            logits, xl_memories, pending = self._extend_segment(piece, knn_memories, xl_memories, pending,
                                                                commit=commit)
        assert logits is not None
        return logits, xl_memories, pending

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

    def _attention_mask(self, layout: DocumentLayout, past: XLCache | None, start: int = 0) -> Tensor:
        """Additive mask ``(B, H, n - start, P + n)`` for the segment's queries from ``start`` on.

        It holds the relative position bias of the true distances, and ``-inf`` where a
        query may not look: the future, another document, padding.
        """
        doc, key_ok = layout.doc, layout.key_ok
        n = doc.shape[1]
        device = doc.device
        P = 0 if past is None else past.keys.shape[2]
        positions = torch.arange(P + n, device=device)
        bias = self.rel_pos(n - start, P + n)  # (H, m, P + n)
        causal = positions[P + start :, None] >= positions[None, P:]  # (m, n)
        self_key = positions[P + start :, None] == positions[None, P:]
        query_doc = doc[:, start:]
        local = causal & (query_doc[:, :, None] == doc[:, None, :]) & (key_ok[:, None, :] | self_key)  # (B, m, n)
        if past is not None:
            from_past = past.valid[:, None, :] & (query_doc == 0)[:, :, None]  # (B, m, P)
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
