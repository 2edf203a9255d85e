"""Attention, and the kNN memory's read and write: everything a memorizing layer does with its memory.

Reading (``memory_attention``): each query, L2-normalised, retrieves its top-k (key, value) pairs from the
layer's ``KNNMemory``; a gate then combines attention over the local keys (segment + XL cache) with
attention over the retrieved pairs. Writing (``write_memory``): after the layer has read, its XL cache
rolls forward and the pairs that leave it go to the kNN memory, so nothing is dropped or stored twice.
Both take plain tensors plus a memory, so any attention layer (ours, or a Hugging Face model's) can call them.

Gates (``GATES``), one interface (``forward(q, keys, values, attn_mask, reads, dropout_p)``):
    ``sigmoid``  the paper: separate softmaxes, ``out = g * memory + (1 - g) * local``, ``g = sigmoid(b_h)``.
    ``joint``    the reference PyTorch code: one softmax over local and retrieved logits.
    ``mlp``      the seed's TODO: the joint softmax, each retrieved logit shifted by a per-head MLP of its
                 log-distance from the query, so how far back memories are, and how many are valid, set how
                 much memory is used.

Shapes:
    B batch (= document streams), n queries in the segment, P earlier keys (XL cache, earlier part of the
    segment), H query heads, Hkv key/value heads, G = H // Hkv, Dh head width, k retrieved memories.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import KNN_GATES, MemorizingTransformerConfig
from .memory import KNNMemory

__all__ = ["Attention", "RelativePositionBias", "relative_position_bucket", "XLCache", "PrefixBuffer", "MemoryReads", "retrieve",
           "memory_attention", "write_memory", "SigmoidGate", "JointGate", "MLPGate", "GATES", "make_gate"]


# ------------------------------------------------------------------------------------------------ positions
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

    @property
    def farthest(self) -> Tensor:
        """``(H,)`` the bias of the last bucket: every key ``max_distance`` or more tokens back."""
        return self.embedding.weight[-1]

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


class XLCache(NamedTuple):
    """Transformer-XL cache of one layer: the (key, value) pairs of the latest tokens.

    keys, values: ``(B, Hkv, P, Dh)``; valid: ``(B, P)`` bool, False for padding
    and for tokens of a document that has since ended in that row.
    tokens: ``(B, P)`` the ids of those tokens (-1 where unknown), so that ``token_shift`` reaches back into the
    previous segment; None in caches made without them (the shift then starts at the segment).
    """

    keys: Tensor
    values: Tensor
    valid: Tensor
    tokens: Tensor | None = None


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


# ---------------------------------------------------------------------------------------------------- read
class MemoryReads(NamedTuple):
    """The retrieved memories of each query.

    keys, values: ``(B, H, n, k, Dh)``; mask: ``(B, H, n, k)`` bool, False for an empty slot or a query not
    allowed to read; distances: ``(B, H, n, k)`` long, tokens from the query back to each memory (only for
    gates with ``needs_distances``); bias: added to every retrieved logit (broadcasts to ``(B, H, n, k)``), or None.
    """

    keys: Tensor
    values: Tensor
    mask: Tensor
    distances: Tensor | None
    bias: Tensor | None


def retrieve(memory: KNNMemory, q: Tensor, k: int, *, dtype: torch.dtype, memory_ok: Tensor | None = None,
             memory_offset: Tensor | None = None, memory_bias: Tensor | None = None,
             with_distances: bool = False) -> MemoryReads:
    """Top-k pairs of each query from ``memory``.

    Args:
        q: ``(B, H, n, Dh)`` L2-normalised queries (unscaled); heads sharing a kv head search together.
        k: neighbours per query.
        dtype: of the returned keys and values.
        memory_ok: ``(B, n)`` bool, queries allowed to read the memory (None: all).
        memory_offset: ``(B, n)`` long, tokens from the newest pair in the memory to each query, plus one
            (for ``with_distances``; None: every query is 1 token after it).
        memory_bias: ``(H,)`` added to every retrieved logit, or None.
    """
    B, H, n, Dh = q.shape
    Hkv = memory.heads
    found = memory.lookup(q.detach().reshape(B, Hkv, (H // Hkv) * n, Dh), k, with_ages=with_distances)
    pairs = found.key_values.to(device=q.device, dtype=dtype).view(B, H, n, k, 2, Dh)
    mask = found.mask.view(B, H, n, k).to(q.device)
    if memory_ok is not None:
        mask = mask & memory_ok[:, None, :, None]
    distances = None
    if with_distances:
        assert found.ages is not None
        offset = memory_offset if memory_offset is not None else torch.ones(B, n, dtype=torch.long, device=q.device)
        distances = found.ages.to(q.device).view(B, H, n, k) + offset[:, None, :, None].to(q.device)
    bias = None if memory_bias is None else memory_bias.to(dtype).view(1, H, 1, 1)
    return MemoryReads(pairs[..., 0, :], pairs[..., 1, :], mask, distances, bias)


def _local_attention(q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, dropout_p: float) -> Tensor:
    """Softmax attention of scaled queries ``(B, H, n, Dh)`` over keys/values ``(B, Hkv, P + n, Dh)``."""
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p,
                                          scale=1.0, enable_gqa=q.shape[1] != keys.shape[1])


def _joint_attention(q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, reads: MemoryReads,
                     bias: Tensor | None, dropout_p: float) -> Tensor:
    """One softmax over retrieved and local logits, ``bias`` added to the retrieved ones."""
    G = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(G, dim=1), values.repeat_interleave(G, dim=1)
    local_logits = q @ keys.transpose(-1, -2) + attn_mask  # (B, H, n, P + n)
    mem_logits = torch.einsum("bhnd,bhnkd->bhnk", q, reads.keys)
    if bias is not None:
        mem_logits = mem_logits + bias
    mem_logits = mem_logits.masked_fill(~reads.mask, float("-inf"))
    weights = F.dropout(torch.softmax(torch.cat((mem_logits, local_logits), dim=-1), dim=-1), p=dropout_p)
    k = reads.keys.shape[-2]
    return torch.einsum("bhnk,bhnkd->bhnd", weights[..., :k], reads.values) + weights[..., k:] @ values


class SigmoidGate(nn.Module):
    """The paper's gate: local and memory attention each get a softmax, mixed by ``sigmoid(b_h)`` (``b_h = 0``
    at first). A query with no valid memory gets the local output unchanged."""

    needs_distances = False

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(heads, 1, 1))

    def forward(self, q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, reads: MemoryReads,
                dropout_p: float) -> Tensor:
        return self.mix(_local_attention(q, keys, values, attn_mask, dropout_p), q, reads, dropout_p)

    def mix(self, local: Tensor, q: Tensor, reads: MemoryReads, dropout_p: float) -> Tensor:
        """Mixes a local attention output ``(B, H, n, Dh)`` computed elsewhere (e.g. by a pretrained model's own
        attention, ``hf.py``) with the attention of the scaled queries ``q (B, H, n, Dh)`` over the memories."""
        logits = torch.einsum("bhnd,bhnkd->bhnk", q, reads.keys)
        if reads.bias is not None:
            logits = logits + reads.bias
        logits = logits.masked_fill(~reads.mask, float("-inf"))
        weights = F.dropout(torch.softmax(logits, dim=-1).nan_to_num(0.0), p=dropout_p)
        memory = torch.einsum("bhnk,bhnkd->bhnd", weights, reads.values)
        gate = torch.sigmoid(self.bias) * reads.mask.any(dim=-1, keepdim=True)  # (B, H, n, 1)
        return local + gate * (memory - local)


class JointGate(nn.Module):
    """One softmax over local and retrieved logits (the reference implementation's choice); no parameters."""

    needs_distances = False

    def __init__(self, heads: int) -> None:
        super().__init__()

    def forward(self, q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, reads: MemoryReads,
                dropout_p: float) -> Tensor:
        return _joint_attention(q, keys, values, attn_mask, reads, reads.bias, dropout_p)


class MLPGate(nn.Module):
    """The joint softmax with a learned bias on each retrieved memory's logit::

        logit_j = s_h * cos(q, k_j) + f_h(log(1 + d_j))

    where ``d_j`` is the distance in tokens from the query back to memory ``j`` and ``f`` is a two-layer MLP
    (1 -> 32 -> heads, last layer zero-initialised, so training starts from the joint gate). The share of
    attention that goes to memory grows with the number of valid memories and with how much ``f`` favours
    their distances; with no valid memory it is 0 and the output is exactly local attention.
    """

    needs_distances = True

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, 32), nn.GELU(), nn.Linear(32, heads))
        nn.init.zeros_(self.mlp[2].weight)
        nn.init.zeros_(self.mlp[2].bias)

    def distance_bias(self, distances: Tensor) -> Tensor:
        """``(B, H, n, k)`` bias of each memory from its distance: head h's own output of the last layer."""
        first, act, last = self.mlp
        hidden = act(first(torch.log1p(distances.float()).unsqueeze(-1) / 8))  # (B, H, n, k, 32)
        return torch.einsum("bhnkj,hj->bhnk", hidden, last.weight) + last.bias.view(1, -1, 1, 1)

    def forward(self, q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, reads: MemoryReads,
                dropout_p: float) -> Tensor:
        assert reads.distances is not None, "the mlp gate needs retrieve(..., with_distances=True)"
        bias = self.distance_bias(reads.distances).to(q.dtype)
        if reads.bias is not None:
            bias = bias + reads.bias
        return _joint_attention(q, keys, values, attn_mask, reads, bias, dropout_p)


GATES: dict[str, type[nn.Module]] = {"sigmoid": SigmoidGate, "joint": JointGate, "mlp": MLPGate}
assert tuple(GATES) == KNN_GATES  # the names the config accepts


def make_gate(name: str, heads: int) -> nn.Module:
    """The gate called ``name`` (one of ``GATES``) for ``heads`` query heads.

    Raises:
        ValueError: an unknown gate.
    """
    if name not in GATES:
        raise ValueError(f"knn_gate must be one of {tuple(GATES)}, got {name!r}")
    return GATES[name](heads)


def memory_attention(
    q: Tensor,
    keys: Tensor,
    values: Tensor,
    attn_mask: Tensor,
    memory: KNNMemory,
    gate: nn.Module,
    *,
    scale: Tensor,
    num_retrieved: int,
    memory_ok: Tensor | None = None,
    memory_offset: Tensor | None = None,
    memory_bias: Tensor | None = None,
    dropout_p: float = 0.0,
) -> Tensor:
    """kNN-augmented attention: retrieve each query's top-k memories, then let ``gate`` combine them with
    local attention. Reads the memory; never writes it (see ``write_memory``).

    Args:
        q: ``(B, H, n, Dh)`` L2-normalised queries.
        keys, values: ``(B, Hkv, P + n, Dh)`` local keys (L2-normalised) and values.
        attn_mask: ``(B | 1, H | 1, n, P + n)`` float, added to the local logits (position bias, ``-inf``
            where a query may not look).
        memory: the layer's memory; it stores ``Hkv`` heads of ``Dh`` features.
        gate: one of ``GATES``' modules.
        scale: ``(H, 1, 1)`` inverse temperature of the cosine-similarity logits.
        num_retrieved: k.
        memory_ok, memory_offset, memory_bias: see ``retrieve``.
        dropout_p: attention dropout (0 in evaluation).

    Returns:
        ``(B, H, n, Dh)``.
    """
    dtype = values.dtype
    reads = retrieve(memory, q, num_retrieved, dtype=dtype, memory_ok=memory_ok, memory_offset=memory_offset,
                     memory_bias=memory_bias, with_distances=gate.needs_distances)
    return gate((q * scale).to(dtype), keys.to(dtype), values, attn_mask, reads, dropout_p)


# --------------------------------------------------------------------------------------------------- write
def write_memory(memory: KNNMemory | None, keys: Tensor, values: Tensor, valid: Tensor, restart: Tensor, *,
                 past: XLCache | None, xl_window: int, add: bool = True, tokens: Tensor | None = None) -> XLCache | None:
    """After a layer has read: roll its XL cache, clear finished documents' memories, and store in ``memory``
    the pairs that leave the XL window.

    Args:
        memory: the layer's kNN memory, or None (memory off).
        keys, values: ``(B, Hkv, n, Dh)`` the segment's pairs.
        valid: ``(B, n)`` bool, pairs that may be kept (the row's last document, not padding).
        restart: ``(B,)`` bool, rows whose earlier memories belong to a finished document.
        past: the XL cache the layer read, or None.
        xl_window: tokens of XL cache to keep (0: every pair goes to the kNN memory).
        add: False reads without storing (memory clears still happen).
        tokens: ``(B, n)`` the segment's token ids, kept in the new cache beside their pairs (or None).

    Returns:
        The new XL cache, or None when ``xl_window == 0``.
    """
    keys, values = keys.detach(), values.detach()
    if past is not None:
        keys = torch.cat((past.keys.to(keys.dtype), keys), dim=2)
        values = torch.cat((past.values.to(values.dtype), values), dim=2)
        valid = torch.cat((past.valid & ~restart[:, None], valid), dim=1)
        if tokens is not None:
            before = past.tokens if past.tokens is not None else torch.full_like(past.valid, -1, dtype=tokens.dtype)
            tokens = torch.cat((before, tokens), dim=1)
    leaving = max(0, keys.shape[2] - xl_window)
    if memory is not None:
        memory.clear_rows(restart)
        if add and leaving > 0:
            pairs = torch.stack((keys[:, :, :leaving], values[:, :, :leaving]), dim=-2)  # (B, Hkv, leaving, 2, Dh)
            memory.store(pairs, valid[:, :leaving])
    if xl_window == 0:
        return None
    return XLCache(keys[:, :, leaving:], values[:, :, leaving:], valid[:, leaving:],
                   None if tokens is None else tokens[:, leaving:])


# ------------------------------------------------------------------------------------------------ the layer
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
        attn_mask: Tensor,
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
            attn_mask: ``(B | 1, H | 1, n, P + n)`` float, added to the local logits.
            past: keys and values ``(B, Hkv, P, Dh)`` of the tokens before ``x`` that it may attend to (the XL
                cache), or None.
            buffers: instead of ``past``, when a segment is read a piece at a time: key and value buffers
                ``(B, Hkv, capacity, Dh)`` along dim 2 holding the ``P`` pairs before ``x`` (XL cache, then the
                earlier part of the segment). This layer's new pairs are written into them.
            key_input, query_input: ``(B, n, dim)`` what the keys / queries are projected from instead of ``x``
                (``token_shift``), or None.
            memory, memory_ok, memory_offset, memory_bias: see ``memory_attention``; memory None = off.

        Returns:
            out ``(B, n, dim)``, and the segment's keys and values ``(B, Hkv, n, Dh)`` (normalised in a
            memorizing layer), for the caller to cache and store.
        """
        B, n, _ = x.shape
        H, Hkv, Dh = self.heads, self.kv_heads, self.dim_head
        q = self.to_q(x if query_input is None else query_input).view(B, n, H, Dh).transpose(1, 2)  # (B, H, n, Dh)
        k, v = self.to_kv(x).view(B, n, 2, Hkv, Dh).permute(2, 0, 3, 1, 4)  # 2 x (B, Hkv, n, Dh)
        if key_input is not None:
            k = F.linear(key_input, self.to_kv.weight[: Hkv * Dh]).view(B, n, Hkv, Dh).transpose(1, 2)
        if self.memorizing:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
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
            out = _local_attention((q * scale).to(v.dtype), keys, values, attn_mask, dropout)  # (B, H, n, Dh)
        out = out.transpose(1, 2).reshape(B, n, H * Dh)
        return self.to_out(out), k, v
