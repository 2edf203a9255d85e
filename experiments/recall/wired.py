"""A recall model wired by hand (nothing learned): checks retrieval through the kNN memory end to end."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from memorizing_transformers_pytorch.model import MemorizingTransformer

__all__ = ["wired_lookup_model"]


def wired_lookup_model(xl: int = 32, num_retrieved: int = 8) -> MemorizingTransformer:
    """A 2-layer model whose weights are set by hand to look a key up (an "induction" circuit).

    Layer 1 copies the previous and the one-before-previous token into their own
    subspaces (heads 0 and 1, by relative position bias alone). In the memorizing
    layer, head 2's query is (this token, previous token) and its key is (previous
    token, the one before), so a query at a key's last byte matches the position just
    after the same key, wherever it is: in the segment, the XL cache or the kNN
    memory. Its value is that position's token, which the output layer reads out.
    Nothing is learned: this checks that retrieval through the kNN memory works end
    to end (positions, the XL hand-over, FIFO storage, the joint softmax), and shows
    what a model that has learned the lookup gains from memory.

    With ``value_len=1`` it recalls every value at any distance the memory holds.
    Longer values are matched on two-byte contexts only (this byte, the previous one),
    which also occur in distractor bindings, so recall falls as memory fills.
    """
    w = 64  # width of each subspace: [token | previous | before previous | retrieved]
    model = MemorizingTransformer(num_tokens=256, dim=4 * w, depth=2, heads=3, dim_head=2 * w, kv_heads=1,
                                  memorizing_layers=(2,), knn_gate="joint", xl_max_memories=xl, max_knn_memories=16384,
                                  num_retrieved_memories=num_retrieved, pad_id=0, clear_memories_on_sos_token_id=2).eval()
    codes = F.normalize(torch.randn(256, w, generator=torch.Generator().manual_seed(0)), dim=-1)
    token, previous, before, retrieved = (slice(i * w, (i + 1) * w) for i in range(4))
    eye = torch.eye(w)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in [model.norm] + [m for layer in model.layers for m in (layer.attn_norm, layer.ff_norm)]:
            norm.weight.fill_(1.0)
        model.token_emb.weight[:, token] = codes
        bias = torch.full((32, 3), -50.0)
        bias[1, 0] = bias[2, 1] = 50.0  # head 0 looks 1 back, head 1 looks 2 back
        bias[:, 2] = 0.0  # head 2: by content only
        model.rel_pos.embedding.weight.copy_(bias)
        # layer norms scale a residual holding n unit codes by sqrt(4w / n); the outputs undo that
        first, second = model.layers[0].attn, model.layers[1].attn
        first.to_kv.weight[2 * w : 3 * w, token] = eye  # value = this token
        first.to_out.weight[previous, 0:w] = eye / (4 * w) ** 0.5
        first.to_out.weight[before, 2 * w : 3 * w] = eye / (4 * w) ** 0.5
        second.to_q.weight[4 * w : 5 * w, token] = eye  # head 2: (token, previous)
        second.to_q.weight[5 * w : 6 * w, previous] = eye
        second.to_kv.weight[0:w, previous] = eye  # key: (previous, before)
        second.to_kv.weight[w : 2 * w, before] = eye
        second.to_kv.weight[2 * w : 3 * w, token] = eye  # value: this token
        second.log_scale.fill_(math.log(40.0))
        second.to_out.weight[retrieved, 4 * w : 5 * w] = eye / (4 * w / 3) ** 0.5
        model.to_logits.weight[:, retrieved] = 10 * codes
    return model

