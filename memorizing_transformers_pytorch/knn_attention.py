"""kNN attention: each query reads its top-k memories, and a gate joins them with local attention.

Reading (``memory_attention``): each query, L2-normalised, retrieves its top-k (key, value) pairs from the
layer's ``KNNMemory`` (``retrieve``); a gate then combines attention over the local keys (segment + XL cache)
with attention over the retrieved pairs. It reads the memory and never writes it (``xl_cache.write_memory``
does). It takes plain tensors plus a memory, so any attention layer (ours, or a Hugging Face model's) can call it.

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

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import KNN_GATES
from .masks import FlexMask, flex_attention
from .memory import KNNMemory

__all__ = ["MemoryReads", "l2_normalize", "retrieve", "retrieve_eagerly_under_compile", "local_attention",
           "joint_attention", "memory_attention", "SigmoidGate", "JointGate", "MLPGate", "GATES", "make_gate"]


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


def l2_normalize(x: Tensor, eps: float = 1e-12) -> Tensor:
    """``x / max(||x||, eps)`` along the last dim, in ``x``'s dtype: the norm is summed in float32, but under
    autocast the result stays bfloat16 (``F.normalize`` would return float32 there, and the attention would
    cast it back)."""
    norm = x.float().pow(2).sum(dim=-1, keepdim=True).sqrt().clamp(min=eps)
    return x / norm.to(x.dtype)


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


_retrieve = retrieve  # what memory_attention calls: see retrieve_eagerly_under_compile


def retrieve_eagerly_under_compile() -> None:
    """Makes the memory search a graph break under ``torch.compile``: the search (faiss, or blocked torch code
    with host-side bookkeeping) then runs eagerly inside a compiled layer. ``compile_layers`` calls it; it is
    not done at import because it imports ``torch._dynamo`` (a second of import time)."""
    global _retrieve
    _retrieve = torch.compiler.disable(retrieve)


def local_attention(q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor | FlexMask, dropout_p: float) -> Tensor:
    """Softmax attention of scaled queries ``(B, H, n, Dh)`` over keys/values ``(B, Hkv, P + n, Dh)`` under the
    local mask (``masks.py``): SDPA with a dense additive mask, or flex attention with a ``FlexMask``."""
    if isinstance(attn_mask, FlexMask):
        assert dropout_p == 0.0, "flex attention has no dropout (the config refuses attn_dropout with it)"
        return flex_attention(q, keys, values.to(q.dtype), attn_mask)
    return F.scaled_dot_product_attention(q, keys, values, attn_mask=attn_mask.to(q.dtype), dropout_p=dropout_p,
                                          scale=1.0, enable_gqa=q.shape[1] != keys.shape[1])


def joint_attention(q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor | FlexMask, reads: MemoryReads,
                    bias: Tensor | None, dropout_p: float) -> Tensor:
    """One softmax over retrieved and local logits, ``bias`` added to the retrieved ones.

    With a ``FlexMask`` on an accelerator, local attention runs in flex attention and the two parts are joined
    by their log-sum-exps (the same softmax, without the local logits in memory); on CPU, where compiled flex
    attention returns no log-sum-exp, it uses the mask's dense form."""
    mem_logits = torch.einsum("bhnd,bhnkd->bhnk", q, reads.keys)
    if bias is not None:
        mem_logits = mem_logits + bias
    mem_logits = mem_logits.masked_fill(~reads.mask, float("-inf"))
    if isinstance(attn_mask, FlexMask):
        if q.device.type == "cpu" or dropout_p:
            attn_mask = attn_mask.dense()
        else:
            local, local_lse = flex_attention(q, keys, values.to(q.dtype), attn_mask, with_lse=True)
            mem_lse = torch.logsumexp(mem_logits.float(), dim=-1)  # -inf where no memory is valid
            total = torch.logaddexp(local_lse, mem_lse)
            mem_weights = torch.exp(mem_logits.float() - total[..., None]).nan_to_num(0.0).to(q.dtype)
            memory = torch.einsum("bhnk,bhnkd->bhnd", mem_weights, reads.values)
            return memory + torch.exp(local_lse - total)[..., None].to(q.dtype) * local
    G = q.shape[1] // keys.shape[1]
    keys, values = keys.repeat_interleave(G, dim=1), values.repeat_interleave(G, dim=1)
    local_logits = q @ keys.transpose(-1, -2) + attn_mask  # (B, H, n, P + n)
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
        return self.mix(local_attention(q, keys, values, attn_mask, dropout_p), q, reads, dropout_p)

    def mix(self, local: Tensor, q: Tensor, reads: MemoryReads, dropout_p: float) -> Tensor:
        """Mixes a local attention output ``(B, H, n, Dh)`` computed elsewhere (e.g. by a pretrained model's own
        attention, ``hf.py``) with the attention of the scaled queries ``q (B, H, n, Dh)`` over the memories.

        The memory attention is one SDPA call, each query its own batch entry over its own ``k`` pairs (1.2-1.4x
        faster than the two einsums and the softmax between them on CPU, forward and backward). A query with no
        valid memory attends to all its (empty) slots, which keeps the result finite on every SDPA backend, and
        its gate is 0."""
        B, H, n, k, Dh = reads.keys.shape
        valid = reads.mask.any(dim=-1, keepdim=True)  # (B, H, n, 1)
        bias = torch.zeros((), dtype=q.dtype, device=q.device) if reads.bias is None else reads.bias.to(q.dtype)
        logit_mask = torch.where(reads.mask | ~valid, bias, float("-inf")).to(q.dtype).expand(B, H, n, k)
        memory = F.scaled_dot_product_attention(
            q.reshape(B, H * n, 1, Dh), reads.keys.reshape(B, H * n, k, Dh), reads.values.reshape(B, H * n, k, Dh),
            attn_mask=logit_mask.reshape(B, H * n, 1, k), dropout_p=dropout_p, scale=1.0).view(B, H, n, Dh)
        gate = (torch.sigmoid(self.bias) * valid).to(local.dtype)  # (B, H, n, 1); a float32 gate would promote
        return local + gate * (memory.to(local.dtype) - local)


class JointGate(nn.Module):
    """One softmax over local and retrieved logits (the reference implementation's choice); no parameters."""

    needs_distances = False

    def __init__(self, heads: int) -> None:
        super().__init__()

    def forward(self, q: Tensor, keys: Tensor, values: Tensor, attn_mask: Tensor, reads: MemoryReads,
                dropout_p: float) -> Tensor:
        return joint_attention(q, keys, values, attn_mask, reads, reads.bias, dropout_p)


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
        return joint_attention(q, keys, values, attn_mask, reads, bias, dropout_p)


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
        attn_mask: the local mask (``masks.py``): ``(B | 1, H | 1, n, P + n)`` float, added to the local logits
            (position bias, ``-inf`` where a query may not look), or a ``FlexMask``.
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
    reads = _retrieve(memory, q, num_retrieved, dtype=dtype, memory_ok=memory_ok, memory_offset=memory_offset,
                     memory_bias=memory_bias, with_distances=gate.needs_distances)
    return gate((q * scale).to(dtype), keys.to(dtype), values, attn_mask, reads, dropout_p)


