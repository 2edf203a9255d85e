"""The model: shapes, gradients, the memory/XL life cycle, document boundaries, positions, dtypes."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model

from memorizing_transformers_pytorch import MemorizingTransformer, MemorizingTransformerConfig, XLCache
from memorizing_transformers_pytorch.positions import relative_position_bucket


def tokens(batch, n, num_tokens=32, low=2):
    return torch.randint(low, num_tokens, (batch, n))


def test_forward_returns_logits_or_loss_and_xl():
    model = tiny_model(xl_max_memories=8)
    knn = model.create_knn_memories(batch_size=2)
    x = tokens(2, 8)
    logits, xl = model(x, knn_memories=knn)
    assert logits.shape == (2, 8, 32)
    assert len(xl) == 3 and xl[0].keys.shape == (2, 1, 8, 8)
    loss, xl2 = model(x, knn_memories=knn, xl_memories=xl, labels=x)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.config.xl_memory_layers == (1, 2, 3)


def test_no_xl_layers_returns_none():
    model = tiny_model()
    _, xl = model(tokens(1, 4), knn_memories=model.create_knn_memories(batch_size=1))
    assert xl is None


def test_backward_reaches_parameters_but_not_memories():
    model = tiny_model(xl_max_memories=4).train()
    knn = model.create_knn_memories(batch_size=2)
    xl = None
    for _ in range(3):
        x = tokens(2, 6)
        loss, xl = model(x, knn_memories=knn, xl_memories=xl, labels=x)
        loss.backward()
    attn = model.layers[1].attn
    assert attn.gate.bias.grad is not None and attn.gate.bias.grad.abs().sum() > 0
    assert attn.log_scale.grad is not None
    assert not knn[0].keys.requires_grad and not knn[0].values.requires_grad
    assert all(not cache.keys.requires_grad for cache in xl)


def test_memory_holds_exactly_what_left_the_xl_window():
    model = tiny_model(xl_max_memories=6, xl_memory_layers=(2,))
    knn = model.create_knn_memories(batch_size=2)
    x1, x2, x3 = tokens(2, 4), tokens(2, 4), tokens(2, 4)
    _, xl = model(x1, knn_memories=knn)
    assert knn[0].count.tolist() == [0, 0] and xl[0].keys.shape[2] == 4
    cache_after_1 = xl[0]
    _, xl = model(x2, knn_memories=knn, xl_memories=xl)
    assert knn[0].count.tolist() == [2, 2]  # 4 + 4 tokens, window 6: the 2 oldest left
    assert torch.equal(knn[0].keys[:, 0, :2], cache_after_1.keys[:, 0, :2])
    assert torch.equal(knn[0].values[:, 0, :2], cache_after_1.values[:, 0, :2])
    assert torch.equal(xl[0].keys[:, :, :2], cache_after_1.keys[:, :, 2:])
    _, xl = model(x3, knn_memories=knn, xl_memories=xl)
    assert knn[0].count.tolist() == [6, 6]


def test_without_xl_every_pair_goes_to_memory_after_retrieval():
    model = tiny_model()
    knn = model.create_knn_memories(batch_size=1)
    x = tokens(1, 5)
    out_first, _ = model(x, knn_memories=knn)
    assert knn[0].count.tolist() == [5]
    # the first segment saw an empty memory: same as memory off
    torch.testing.assert_close(out_first, model(x)[0])


@pytest.mark.parametrize("knn_gate", ["sigmoid", "joint", "mlp"])
def test_empty_memory_gives_local_attention_exactly(knn_gate):
    model = tiny_model(knn_gate=knn_gate)
    x = tokens(2, 7)
    with_empty, _ = model(x, knn_memories=model.create_knn_memories(batch_size=2))
    memory_off, _ = model(x, knn_memories=None)
    assert torch.isfinite(with_empty).all()
    torch.testing.assert_close(with_empty, memory_off)


@pytest.mark.parametrize("knn_gate", ["sigmoid", "joint", "mlp"])
def test_memory_changes_the_output_once_filled(knn_gate):
    model = tiny_model(knn_gate=knn_gate)
    knn = model.create_knn_memories(batch_size=1)
    model(tokens(1, 8), knn_memories=knn)
    x = tokens(1, 8)
    with_memory, _ = model(x, knn_memories=knn, add_knn_memory=False)
    without, _ = model(x)
    assert not torch.allclose(with_memory, without)


@pytest.mark.parametrize("xl", [0, 3])
def test_mlp_gate_sees_the_true_distance_of_each_memory(xl):
    """With k = all memories, query t of a segment after S tokens sees distances P + t + 1 .. S + t."""
    seq_len, segments = 4, 3
    model = tiny_model(knn_gate="mlp", xl_max_memories=xl, num_retrieved_memories=seq_len * (segments - 1) - xl)
    seen = []
    attn = model.layers[1].attn
    attn.gate.mlp[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    knn, xl_memories = model.create_knn_memories(batch_size=2), None
    for _ in range(segments):
        seen.clear()
        _, xl_memories = model(tokens(2, seq_len), knn_memories=knn, xl_memories=xl_memories)
    S = seq_len * (segments - 1)
    distances = torch.expm1(seen[0][..., 0] * 8).round().long()  # (B, H, n, k)
    for t in range(seq_len):
        expected = set(range(xl + t + 1, S + t + 1))
        for row in range(2):
            for head in range(attn.heads):
                assert set(distances[row, head, t].tolist()) == expected


def test_mlp_gate_gets_gradients_and_changes_with_distance():
    model = tiny_model(knn_gate="mlp").train()
    knn = model.create_knn_memories(batch_size=2)
    model(tokens(2, 8), knn_memories=knn)
    loss, _ = model(tokens(2, 8), knn_memories=knn, labels=tokens(2, 8))
    loss.backward()
    mlp = model.layers[1].attn.gate.mlp
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())
    bias = mlp(torch.log1p(torch.tensor([[1.0], [1000.0]])) / 8)
    assert bias.shape == (2, 4) and not torch.allclose(bias[0], bias[1])


def test_gate_forced_to_zero_matches_plain_attention():
    model = tiny_model()
    attn = model.layers[1].attn
    with torch.no_grad():
        attn.gate.bias.fill_(-float("inf"))  # sigmoid(-inf) = 0
    knn = model.create_knn_memories(batch_size=2)
    model(tokens(2, 6), knn_memories=knn)
    x = tokens(2, 6)
    gated_off, _ = model(x, knn_memories=knn)
    memory_off, _ = model(x, knn_memories=None)
    torch.testing.assert_close(gated_off, memory_off)


@pytest.mark.parametrize("gate", ["joint", "mlp"])
def test_memory_rel_pos_bias_adds_the_farthest_buckets_bias_to_each_memory(gate):
    """Reference: the MLP gate whose last layer outputs a constant per head adds exactly that constant to each
    retrieved logit, so it must match ``memory_rel_pos_bias`` with the farthest bucket set to the same values."""
    torch.manual_seed(0)
    biased = tiny_model(knn_gate=gate, memory_rel_pos_bias=True)
    reference = tiny_model(knn_gate="mlp")
    with torch.no_grad():
        biased.rel_pos.embedding.weight[-1] = torch.tensor([3.0, -2.0, 0.5, 6.0])
        reference.load_state_dict(biased.state_dict(), strict=False)
        last = reference.layers[1].attn.gate.mlp[2]
        last.weight.zero_()
        last.bias.copy_(biased.rel_pos.embedding.weight[-1])
        if gate == "mlp":
            last.weight.copy_(biased.layers[1].attn.gate.mlp[2].weight)
            last.bias.add_(biased.layers[1].attn.gate.mlp[2].bias)
    first, x = tokens(2, 8), tokens(2, 8)
    outputs = []
    for model in (biased, reference):
        knn = model.create_knn_memories(batch_size=2)
        model(first, knn_memories=knn)
        outputs.append(model(x, knn_memories=knn)[0])
    torch.testing.assert_close(outputs[0], outputs[1])
    unbiased = tiny_model(knn_gate=gate)
    unbiased.load_state_dict(biased.state_dict())
    knn = unbiased.create_knn_memories(batch_size=2)
    unbiased(first, knn_memories=knn)
    assert not torch.allclose(unbiased(x, knn_memories=knn)[0], outputs[0])


def test_memory_rel_pos_bias_trains_the_farthest_bucket_through_the_memory():
    model = tiny_model(knn_gate="joint", memory_rel_pos_bias=True, xl_max_memories=0, rel_pos_max_distance=64)
    knn = model.create_knn_memories(batch_size=2)
    model(tokens(2, 8), knn_memories=knn)
    loss, _ = model(tokens(2, 8), knn_memories=knn, labels=tokens(2, 8))
    loss.backward()
    # 8 tokens reach no farther than bucket 7 locally: the last bucket's gradient comes only from the memories
    assert model.rel_pos.embedding.weight.grad[-1].abs().sum() > 0


def test_sdpa_local_attention_matches_a_manual_softmax():
    model = tiny_model(xl_max_memories=4, heads=4, kv_heads=2)
    x = tokens(2, 5)
    _, xl = model(x)
    block = model.layers[0]
    h = block.attn_norm(model.token_emb(tokens(2, 5)))
    layout = model._document_layout(torch.full((2, 5), 3))
    mask = model._attention_mask(layout, xl[0])
    out, _, _ = block.attn(h, attn_mask=mask, past=xl[0][:2])
    a = block.attn
    q = a.to_q(h).view(2, 5, 4, 8).transpose(1, 2)
    k, v = a.to_kv(h).view(2, 5, 2, 2, 8).permute(2, 0, 3, 1, 4)
    k = torch.cat((xl[0].keys, k), 2).repeat_interleave(2, 1)
    v = torch.cat((xl[0].values, v), 2).repeat_interleave(2, 1)
    weights = torch.softmax(q @ k.transpose(-1, -2) / 8**0.5 + mask, dim=-1)
    expected = a.to_out((weights @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("num_queries,num_keys", [(1, 1), (1, 9), (5, 5), (3, 40), (40, 200)])
def test_relative_position_bias_is_the_bucket_embedding_of_each_distance(num_queries, num_keys):
    from memorizing_transformers_pytorch.positions import RelativePositionBias

    rel_pos = RelativePositionBias(heads=3, num_buckets=8, max_distance=16)
    torch.nn.init.normal_(rel_pos.embedding.weight)
    queries = torch.arange(num_keys - num_queries, num_keys)
    buckets = relative_position_bucket(queries[:, None] - torch.arange(num_keys)[None, :], 8, 16)
    want = rel_pos.embedding(buckets).permute(2, 0, 1)
    got = rel_pos(num_queries, num_keys)
    assert torch.equal(got, want)
    grad = torch.randn_like(want)
    want_grad, = torch.autograd.grad(want, rel_pos.embedding.weight, grad)
    got_grad, = torch.autograd.grad(got, rel_pos.embedding.weight, grad)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-3)  # summed in another order


def test_previous_token_heads_attend_to_the_token_h_plus_1_back():
    """Head h starts looking h + 1 tokens back (the rest of the bias at 0), in every layer and across the XL
    boundary; the other heads keep their random start, and every bias stays learnable."""
    model = tiny_model(heads=4, kv_heads=1, previous_token_heads=2, xl_max_memories=8)
    table = model.rel_pos.embedding.weight
    assert table[1, 0] == table[2, 1] == 10.0 and table[:, :2].abs().sum() == 20.0
    assert table[:, 2:].std() > 0.1 and table.requires_grad
    x = tokens(1, 6)
    _, xl = model(x, xl_memories=None)
    mask = model._attention_mask(model._document_layout(x), xl[0])  # segment 2: P XL keys, then 6 in the segment
    P = xl[0].keys.shape[2]
    weights = mask[0, :2].softmax(-1)  # position-only attention, heads 0 and 1
    for i in range(6):
        assert weights[0, i].argmax() == P + i - 1 and weights[1, i].argmax() == P + i - 2
        assert weights[0, i].max() > 0.99 and weights[1, i].max() > 0.99


def test_relative_position_bucket_uses_true_distance_across_the_xl_boundary():
    """A key d tokens back gets the bucket of distance d, in every segment."""
    model = tiny_model(xl_max_memories=6, rel_pos_num_buckets=8, rel_pos_max_distance=16)
    rel = model.rel_pos
    table = rel.embedding.weight  # (buckets, H)
    knn = model.create_knn_memories(batch_size=1)
    xl = None
    for _ in range(3):
        x = tokens(1, 4)
        past = xl[0] if xl else None
        layout = model._document_layout(x)
        mask = model._attention_mask(layout, past)
        P = 0 if past is None else past.keys.shape[2]
        for i in range(4):
            for j in range(P + i + 1):
                d = (P + i) - j
                bucket = relative_position_bucket(torch.tensor(d), 8, 16)
                torch.testing.assert_close(mask[0, :, i, j], table[bucket])
        _, xl = model(x, knn_memories=knn, xl_memories=xl)
    buckets = relative_position_bucket(torch.arange(40), 8, 16)
    assert buckets[:4].tolist() == [0, 1, 2, 3]  # exact for small distances
    assert (buckets.diff() >= 0).all() and buckets.max() == 7


def test_kv_heads_grouped_query():
    model = tiny_model(heads=4, kv_heads=2, xl_max_memories=4)
    knn = model.create_knn_memories(batch_size=2)
    assert knn[0].heads == 2
    xl = None
    for _ in range(3):
        logits, xl = model(tokens(2, 4), knn_memories=knn, xl_memories=xl)
    assert torch.isfinite(logits).all() and knn[0].count.tolist() == [8, 8]


SOS, EOS = 1, 0


@pytest.mark.parametrize("xl_max_memories, token_shift", [(0, 0), (4, 0), (4, 3)])
def test_sos_clears_only_its_row_and_the_new_document_starts_fresh(xl_max_memories, token_shift):
    model = tiny_model(clear_memories_on_sos_token_id=SOS, xl_max_memories=xl_max_memories, token_shift=token_shift)
    knn = model.create_knn_memories(batch_size=2)
    xl = None
    for _ in range(2):
        _, xl = model(tokens(2, 6), knn_memories=knn, xl_memories=xl)
    held_before = knn[0].count.clone()
    x = tokens(2, 6)
    x[0, 3] = SOS
    logits, xl = model(x, knn_memories=knn, xl_memories=xl)
    # row 0: only the new document (3 tokens from the SOS) is kept anywhere
    assert knn[0].count[0] == (3 if xl_max_memories == 0 else 0)
    assert knn[0].count[1] >= held_before[1]
    if xl is not None:
        assert xl[0].valid[0].tolist() == [False, True, True, True]
        assert xl[0].valid[1].all()
    # tokens from the SOS on see nothing of the old document: same as a fresh start
    fresh, _ = model(x[:1, 3:], knn_memories=model.create_knn_memories(batch_size=1))
    torch.testing.assert_close(logits[:1, 3:], fresh)


@pytest.mark.parametrize("shift", [1, 3])
def test_token_shift_mixes_the_inputs_before_within_segment_and_document(shift):
    model = tiny_model(token_shift=shift, clear_memories_on_sos_token_id=SOS)
    x = tokens(2, 7)
    x[1, 4] = SOS
    doc = model._document_layout(x).doc
    token_shift = model.layers[1].shift  # the memorizing layer's
    assert model.layers[0].shift is None and model.layers[2].shift is None
    inputs = torch.randn(2, 7, model.config.dim)
    shifted = token_shift(inputs, doc, 0)
    for got, linears, count in ((shifted[0], token_shift.keys, shift), (shifted[1], token_shift.queries, shift - 1)):
        assert len(linears) == count
        if count == 0:
            assert got is None
            continue
        expected = torch.zeros(2, 7, model.config.dim)
        for row in range(2):
            for t in range(7):  # naive: each input `back` positions before, if in the segment and the document
                for back in range(1, count + 1):
                    if t - back >= 0 and not (row == 1 and t - back < 4 <= t):
                        expected[row, t] += linears[back - 1].weight @ inputs[row, t - back]
        torch.testing.assert_close(got, expected)
        # the same when the last positions arrive one at a time (generation)
        part = 0 if linears is token_shift.keys else 1
        torch.testing.assert_close(token_shift(inputs, doc, 5)[part], expected[:, 5:])
        torch.testing.assert_close(token_shift(inputs[:, :2], doc[:, :2], 0)[part], expected[:, :2])


def test_token_shift_parameters_do_not_grow_with_the_vocabulary():
    small, large = tiny_model(token_shift=3), tiny_model(token_shift=3, num_tokens=4096)
    count = lambda model: sum(p.numel() for p in model.layers[1].shift.parameters())
    assert count(small) == count(large) == (2 * 3 - 1) * small.config.dim**2


def _naive_shift(linears, inputs, x, sos, first):
    """Sum of ``linears[back - 1](inputs[t - back])`` over positions of the same document (a document starts at
    an ``sos`` token ``x``), for positions ``first`` on."""
    B, n = x.shape
    out = torch.zeros(B, n - first, inputs.shape[-1])
    for row in range(B):
        starts = [t for t in range(n) if x[row, t] == sos]
        for t in range(first, n):
            begin = max([s for s in starts if s <= t], default=0)
            for back in range(1, len(linears) + 1):
                if t - back >= begin:
                    out[row, t - first] += linears[back - 1].weight @ inputs[row, t - back]
    return out


@pytest.mark.parametrize("xl_max_memories", [0, 4])
def test_token_shift_reaches_into_the_previous_segment_through_the_xl_cache(xl_max_memories):
    """With an XL cache, the shift of a segment's first positions sees the layer's inputs at the previous
    segment's last positions (of the same document); without one it starts at the segment."""
    model = tiny_model(token_shift=3, xl_max_memories=xl_max_memories, clear_memories_on_sos_token_id=SOS)
    first, second = tokens(3, 6), tokens(3, 6)
    second[0, 0] = SOS  # row 0: a new document from the segment's first token; row 1: from its second
    second[1, 1] = SOS
    seen = []
    model.layers[1].register_forward_hook(lambda module, args, kwargs, out: seen.append(args), with_kwargs=True)
    knn = model.create_knn_memories(batch_size=3)
    _, xl = model(first, knn_memories=knn)
    model(second, knn_memories=knn, xl_memories=xl)
    both = torch.cat((first, second), dim=1) if xl_max_memories else second
    inputs = torch.cat((seen[0][0], seen[1][0]), dim=1) if xl_max_memories else seen[1][0]
    token_shift = model.layers[1].shift
    for got, linears in zip(seen[1][1:], (token_shift.keys, token_shift.queries)):
        torch.testing.assert_close(got, _naive_shift(linears, inputs, both, SOS, both.shape[1] - 6))
    if xl_max_memories:  # the row whose document goes on does see the previous segment
        assert not torch.allclose(seen[1][1][2, 0], torch.zeros_like(seen[1][1][2, 0]))


def test_token_shift_keys_and_queries_read_the_input_plus_the_shift():
    model = tiny_model(token_shift=2)
    block = model.layers[1]  # the memorizing layer
    attn = block.attn
    B, n, Hkv, Dh = 2, 5, attn.kv_heads, attn.dim_head
    x, key_shift, query_shift = (torch.randn(B, n, model.config.dim) for _ in range(3))
    captured = {}
    attn.register_forward_hook(lambda module, args, kwargs, out: captured.update(kwargs), with_kwargs=True)
    _, k, v = block(x, key_shift, query_shift, attn_mask=torch.zeros(1, 1, n, n))
    naive_k, _ = attn.to_kv(block.attn_norm(x + key_shift)).view(B, n, 2, Hkv, Dh).unbind(2)
    _, naive_v = attn.to_kv(block.attn_norm(x)).view(B, n, 2, Hkv, Dh).unbind(2)
    torch.testing.assert_close(k, torch.nn.functional.normalize(naive_k.transpose(1, 2), dim=-1))
    torch.testing.assert_close(v, naive_v.transpose(1, 2))
    torch.testing.assert_close(captured["query_input"], block.attn_norm(x + query_shift))
    # the model passes the shifts to memorizing layers only
    seen = {}
    for number, layer in enumerate(model.layers, start=1):
        layer.register_forward_hook(lambda module, args, kwargs, out, number=number: seen.update(
            {number: args}), with_kwargs=True)
    x_tokens = tokens(2, 6)
    model(x_tokens)
    assert seen[1][1:] == (None, None) and seen[3][1:] == (None, None)
    doc = model._document_layout(x_tokens).doc
    expected = block.shift(seen[2][0], doc, 0)  # from the layer's own inputs
    torch.testing.assert_close(seen[2][1], expected[0])
    torch.testing.assert_close(seen[2][2], expected[1])


def test_eos_ends_the_document_after_the_token():
    model = tiny_model(clear_memories_on_eos_token_id=EOS)
    knn = model.create_knn_memories(batch_size=2)
    model(tokens(2, 6), knn_memories=knn)
    x = tokens(2, 6)
    x[1, 1] = EOS
    logits, _ = model(x, knn_memories=knn)
    assert knn[0].count.tolist() == [12, 4]  # row 1 keeps the 4 tokens after the EOS
    fresh, _ = model(x[1:, 2:], knn_memories=model.create_knn_memories(batch_size=1))
    torch.testing.assert_close(logits[1:, 2:], fresh)
    x = tokens(2, 6)
    x[0, -1] = EOS  # ends exactly at the segment end: nothing of it survives
    model(x, knn_memories=knn)
    assert knn[0].count[0] == 0


def test_padding_never_enters_memory_or_loss():
    model = tiny_model(pad_id=0, xl_max_memories=4)
    knn = model.create_knn_memories(batch_size=2)
    x = tokens(2, 6)
    x[1, 4:] = 0
    loss, xl = model(x, knn_memories=knn, labels=x)
    assert xl[0].valid[1].tolist() == [True, True, False, False]
    _, xl = model(tokens(2, 6), knn_memories=knn, xl_memories=xl)
    assert knn[0].count.tolist() == [8, 6]  # row 1: 2 + 6 left the window, 2 of them padding
    logits, _ = model(x)
    keep = x != 0
    torch.testing.assert_close(loss, F.cross_entropy(logits[keep], x[keep]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights(dtype):
    model = tiny_model(xl_max_memories=4).to(dtype)
    knn = model.create_knn_memories(batch_size=2)
    xl = None
    for _ in range(3):
        logits, xl = model(tokens(2, 4), knn_memories=knn, xl_memories=xl)
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    assert knn[0].keys.dtype == dtype


def test_bfloat16_autocast_training_step():
    model = tiny_model(xl_max_memories=4).train()
    knn = model.create_knn_memories(batch_size=2)
    xl = None
    for _ in range(2):
        x = tokens(2, 4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, xl = model(x, knn_memories=knn, xl_memories=xl, labels=x)
        loss.backward()
    assert torch.isfinite(loss)


def test_config_round_trips_through_json(tmp_path):
    model = tiny_model(xl_max_memories=4, knn_gate="joint")
    path = tmp_path / "config.json"
    model.config.to_json(path)
    assert MemorizingTransformerConfig.from_json(path) == model.config


@pytest.mark.parametrize(
    "config, error",
    [
        (dict(memorizing_layers=(0,)), ValueError),
        (dict(memorizing_layers=(4,)), ValueError),
        (dict(num_retrieved_memories=128), ValueError),
        (dict(heads=4, kv_heads=3), ValueError),
        (dict(knn_gate="mlp?"), ValueError),
        (dict(knn_index="hnsw"), ValueError),
        (dict(dim=8.0), TypeError),
        (dict(xl_memory_layers=(1,)), ValueError),  # XL layers without an XL size
        (dict(clear_memories_on_sos_token_id=99), ValueError),
        (dict(not_an_option=1), TypeError),
        (dict(previous_token_heads=-1), ValueError),
        (dict(heads=2, kv_heads=1, previous_token_heads=3), ValueError),  # more than the heads
        (dict(rel_pos_num_buckets=4, previous_token_heads=2), ValueError),  # distance 2 has no bucket of its own
        (dict(knn_gate="sigmoid", memory_rel_pos_bias=True), ValueError),  # cancels out in its own softmax
        (dict(knn_gate="joint", memory_rel_pos_bias="yes"), ValueError),
    ],
)
def test_invalid_config_is_rejected(config, error):
    with pytest.raises(error):
        tiny_model(**config)


def _bad_calls():
    good = torch.randint(2, 32, (2, 4))
    return [
        (dict(x=torch.tensor([[1, 40, 2, 3]] * 2)), ValueError),  # token id too large
        (dict(x=torch.tensor([[1, -1, 2, 3]] * 2)), ValueError),
        (dict(x=good.float()), TypeError),
        (dict(x=good[0]), ValueError),  # wrong rank
        (dict(x=torch.randint(2, 32, (3, 4))), ValueError),  # batch does not match the memories
        (dict(x=good, labels=good[:, :3]), ValueError),
        (dict(x=good, labels=good.float()), TypeError),
        (dict(x=good, labels=torch.full((2, 4), 99)), ValueError),
        (dict(x=good, knn_memories=[]), ValueError),
        (dict(x=good, xl_memories=[XLCache(torch.zeros(2, 1, 2, 8), torch.zeros(2, 1, 2, 8), torch.ones(2, 2, dtype=torch.bool))] * 2), ValueError),
    ]


@pytest.mark.parametrize("kwargs, error", _bad_calls())
def test_bad_input_raises_and_leaves_memories_unchanged(kwargs, error):
    model = tiny_model(xl_max_memories=4)
    knn = model.create_knn_memories(batch_size=2)
    _, xl = model(tokens(2, 4), knn_memories=knn)
    before = {k: t.clone() for k, t in knn[0].state_dict().items()}
    kwargs.setdefault("knn_memories", knn)
    kwargs.setdefault("xl_memories", xl)
    with pytest.raises(error):
        model(**kwargs)
    for k, t in knn[0].state_dict().items():
        assert torch.equal(t, before[k])


def test_keyword_construction_equals_config_construction():
    config = MemorizingTransformerConfig(num_tokens=16, dim=16, depth=2, heads=2, dim_head=8)
    assert MemorizingTransformer(config).config == MemorizingTransformer(**config.to_dict()).config
    assert config.memorizing_layers == (1,)
