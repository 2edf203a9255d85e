"""The kNN attention component (attention.py) against per-query loops written from the method's description.

Each gate is checked against its own naive reference: for every (row, head, query), brute-force top-k over the
pairs that row holds, then the softmaxes and the mix the gate's definition gives, in float64. Nothing here
calls the gates' or the memory's search code except through ``memory_attention`` itself.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from memorizing_transformers_pytorch import KNNMemory, memory_attention, write_memory
from memorizing_transformers_pytorch.knn_attention import make_gate
from memorizing_transformers_pytorch.xl_cache import XLCache

B, H, n, P, Dh, k, M = 2, 4, 5, 3, 8, 4, 16
ADDED = (20, 2)  # row 0 wraps its 16-pair ring; row 1 holds fewer pairs than k


def softmax(logits):
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    return [w / sum(weights) for w in weights]


@torch.no_grad()
def mlp_bias(gate, distance, head):
    """The MLP gate's f_h(log(1 + d)), one scalar at a time."""
    first, _, last = gate.mlp
    x = math.log1p(distance) / 8
    hidden = F.gelu(first.weight[:, 0].double() * x + first.bias.double())
    return float(last.weight[head].double() @ hidden + last.bias[head].double())


@pytest.mark.parametrize("kv_heads", [1, 2])
@pytest.mark.parametrize("gate_name", ["sigmoid", "joint", "mlp"])
def test_memory_attention_matches_a_per_query_loop(gate_name, kv_heads):
    torch.manual_seed(0)
    G = H // kv_heads
    q = F.normalize(torch.randn(B, H, n, Dh), dim=-1)
    keys = F.normalize(torch.randn(B, kv_heads, P + n, Dh), dim=-1)
    values = torch.randn(B, kv_heads, P + n, Dh)
    attn_mask = torch.randn(B, 1, n, P + n)
    for i in range(n):
        attn_mask[:, :, i, P + i + 1 :] = float("-inf")  # causal
    attn_mask[1, :, :, 0] = float("-inf")  # row 1 may not see its first cached key

    pairs = torch.randn(B, kv_heads, max(ADDED), 2, Dh)
    pairs[..., 0, :] = F.normalize(pairs[..., 0, :], dim=-1)
    mask = torch.arange(max(ADDED)).view(1, -1) < torch.tensor(ADDED).view(-1, 1)
    memory = KNNMemory(dim=Dh, max_memories=M, num_indices=B, heads=kv_heads)
    memory.add(pairs, mask=mask)
    # what each (row, kv head) holds: the newest M pairs, with their ages (pairs added after each)
    held = [[[(pairs[b, h, j, 0], pairs[b, h, j, 1], ADDED[b] - 1 - j) for j in range(max(0, ADDED[b] - M), ADDED[b])]
             for h in range(kv_heads)] for b in range(B)]

    gate = make_gate(gate_name, H)
    with torch.no_grad():
        for parameter in gate.parameters():
            parameter.normal_()
    scale = torch.rand(H, 1, 1) * 5 + 1
    memory_ok = torch.ones(B, n, dtype=torch.bool)
    memory_ok[1, 0] = False  # this query may not read the memory
    memory_offset = torch.randint(1, 9, (B, n))
    memory_bias = None if gate_name == "sigmoid" else torch.randn(H)

    with torch.no_grad():
        got = memory_attention(q, keys, values, attn_mask, memory, gate, scale=scale, num_retrieved=k,
                               memory_ok=memory_ok, memory_offset=memory_offset, memory_bias=memory_bias)
    assert got.shape == (B, H, n, Dh)

    want = torch.zeros(B, H, n, Dh, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            s = float(scale[h])
            for i in range(n):
                query = q[b, h, i].double()
                local = [s * float(query @ keys[b, h // G, j].double()) + float(attn_mask[b, 0, i, j])
                         for j in range(P + n)]
                local_values = [values[b, h // G, j].double() for j in range(P + n)]
                found = sorted(held[b][h // G], key=lambda item: -float(query @ item[0].double()))[:k]
                found = found if memory_ok[b, i] else []
                memory_logits = []
                for key, _, age in found:
                    logit = s * float(query @ key.double())
                    if gate_name == "mlp":
                        logit += mlp_bias(gate, age + int(memory_offset[b, i]), h)
                    if memory_bias is not None:
                        logit += float(memory_bias[h])
                    memory_logits.append(logit)
                memory_values = [value.double() for _, value, _ in found]
                if gate_name == "sigmoid":
                    local_out = sum(w * v for w, v in zip(softmax(local), local_values))
                    if found:
                        memory_out = sum(w * v for w, v in zip(softmax(memory_logits), memory_values))
                        g = 1 / (1 + math.exp(-float(gate.bias[h].detach())))
                        want[b, h, i] = g * memory_out + (1 - g) * local_out
                    else:
                        want[b, h, i] = local_out
                else:
                    weights = softmax(memory_logits + local)
                    want[b, h, i] = sum(w * v for w, v in zip(weights, memory_values + local_values))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_write_memory_rolls_the_xl_cache_and_stores_what_leaves_it():
    """Per row: the XL window keeps the newest valid-or-not pairs; what leaves it goes to memory if valid."""
    torch.manual_seed(1)
    memory = KNNMemory(dim=Dh, max_memories=M, num_indices=B)
    past = XLCache(torch.randn(B, 1, 3, Dh), torch.randn(B, 1, 3, Dh), torch.tensor([[True, False, True]] * B))
    seg_keys, seg_values = torch.randn(B, 1, 4, Dh), torch.randn(B, 1, 4, Dh)
    valid = torch.tensor([[True, True, False, True], [True, True, True, True]])
    restart = torch.tensor([False, True])  # row 1's cache belongs to a finished document
    # the layer hands over what it attended to: the cache's pairs, then the segment's
    new = write_memory(memory, torch.cat((past.keys, seg_keys), dim=2), torch.cat((past.values, seg_values), dim=2),
                       valid, restart, past=past, xl_window=5)
    assert torch.equal(new.keys, torch.cat((past.keys, seg_keys), dim=2)[:, :, 2:])
    assert new.valid.tolist() == [[True, True, True, False, True], [False, True, True, True, True]]
    # 7 pairs, window 5: the 2 oldest leave; row 0 stores the valid one, row 1 none (its cache was invalidated)
    assert memory.count.tolist() == [1, 0]
    assert torch.equal(memory.keys[0, 0, 0], past.keys[0, 0, 0])
    assert write_memory(memory, seg_keys, seg_values, valid, torch.tensor([True, False]), past=None, xl_window=0) is None
    assert memory.count.tolist() == [3, 4]  # row 0 cleared, then both rows store every valid pair


def reference_sigmoid_mix(gate, local, q, reads):
    """The sigmoid gate written out: a masked softmax over each query's retrieved logits, two einsums."""
    logits = torch.einsum("bhnd,bhnkd->bhnk", q, reads.keys)
    if reads.bias is not None:
        logits = logits + reads.bias
    weights = torch.softmax(logits.masked_fill(~reads.mask, float("-inf")), dim=-1).nan_to_num(0.0)
    memory = torch.einsum("bhnk,bhnkd->bhnd", weights, reads.values)
    g = torch.sigmoid(gate.bias) * reads.mask.any(dim=-1, keepdim=True)
    return g * memory + (1 - g) * local


@pytest.mark.parametrize("with_bias", [False, True])
def test_sigmoid_gates_batched_kernel_matches_the_einsums_with_gradients(with_bias):
    """The memory attention as one SDPA call against the einsum form, outputs and every gradient, with partly
    valid rows and queries with no valid memory (their gradient to the memories must be 0, not NaN)."""
    from memorizing_transformers_pytorch.knn_attention import MemoryReads

    torch.manual_seed(0)
    gate = make_gate("sigmoid", H)
    with torch.no_grad():
        gate.bias.normal_()
    inputs = dict(local=torch.randn(B, H, n, Dh), q=torch.randn(B, H, n, Dh), pairs=torch.randn(B, H, n, k, 2, Dh))
    mask = torch.rand(B, H, n, k) < 0.6
    mask[0, 1] = False  # a head with no valid memory at all
    bias = torch.randn(1, H, 1, 1) if with_bias else None
    results = []
    for mix in (gate.mix, lambda local, q, reads, dropout_p: reference_sigmoid_mix(gate, local, q, reads)):
        leaves = {name: value.clone().requires_grad_() for name, value in inputs.items()}
        gate.zero_grad()
        pairs = leaves["pairs"]  # keys and values are strided views of the gathered pairs, as retrieve gives them
        reads = MemoryReads(pairs[..., 0, :], pairs[..., 1, :], mask, None, bias)
        out = mix(leaves["local"], leaves["q"], reads, 0.0)
        (out * torch.randn_like(out, generator=torch.Generator().manual_seed(1))).sum().backward()
        results.append((out, {name: leaf.grad for name, leaf in leaves.items()}, gate.bias.grad.clone()))
    (out, grads, bias_grad), (want, want_grads, want_bias_grad) = results
    torch.testing.assert_close(out, want)
    for name in inputs:
        assert grads[name].isfinite().all()
        torch.testing.assert_close(grads[name], want_grads[name], msg=name)
    torch.testing.assert_close(bias_grad, want_bias_grad)
    assert (grads["pairs"][0, 1] == 0).all()
