"""CUDA checks (skipped without a GPU): the same results as on the CPU, and low-precision training."""

import pytest
import torch
from conftest import tiny_model

from memorizing_transformers_pytorch import KNNMemory

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_memory_search_on_cuda_matches_cpu():
    cpu = KNNMemory(dim=64, max_memories=5000, num_indices=2)
    gpu = KNNMemory(dim=64, max_memories=5000, num_indices=2)
    for _ in range(3):
        pairs = torch.randn(2, 2048, 2, 64)
        cpu.add(pairs)
        gpu.add(pairs.cuda())
    assert gpu.keys.is_cuda and gpu.count.is_cuda
    queries = torch.randn(2, 300, 64)
    kv_cpu, mask_cpu = cpu.search(queries, 32)
    kv_gpu, mask_gpu = gpu.search(queries.cuda(), 32)
    assert torch.equal(mask_gpu.cpu(), mask_cpu)
    scores_cpu = (kv_cpu[..., 0, :] * queries[:, :, None]).sum(-1)
    scores_gpu = (kv_gpu[..., 0, :].cpu() * queries[:, :, None]).sum(-1)
    torch.testing.assert_close(scores_gpu, scores_cpu, rtol=1e-4, atol=1e-4)


def test_chunked_topk_on_cuda_returns_what_topk_returns():
    """The search's top-k on the GPU (by chunks) against one topk, on a 64K row with an empty tail."""
    from memorizing_transformers_pytorch.search import chunked_topk

    scores = torch.randn(2, 512, 65536 + 7, device="cuda")
    scores[1, :, 40000:] = float("-inf")
    values, index = chunked_topk(scores, 32)
    assert torch.equal(values, scores.topk(32, dim=-1).values)
    assert torch.equal(scores.gather(-1, index), values)
    # empty slots past a per-row limit, unmasked in the scores (as exact_top_slots passes them on the GPU)
    limit = torch.tensor([65543, 40007], device="cuda").view(2, 1, 1)
    masked = scores.masked_fill(torch.arange(65543, device="cuda") >= limit, float("-inf"))
    noisy = scores.clone()
    noisy[1, :, 40007:] = 10.0  # stale keys that would win if not masked
    values, index = chunked_topk(noisy, 32, limit=limit)
    assert torch.equal(values, masked.topk(32, dim=-1).values)
    assert torch.equal(masked.gather(-1, index), values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_first_stage_on_cuda_is_tf32x3_within_its_bound(dtype):
    """The Triton chunk maxima against float64 ones, with 4 heads, width 128, a stream holding 40,007 of 50,000
    looked-at slots of 65,536, and 1,000 queries (no multiple of a tile): within the bound everywhere, and on
    inputs whose every entry loses almost the most tf32 can, far closer than one tf32 product would be (so the
    kernel really computes tf32x3)."""
    pytest.importorskip("triton")
    from memorizing_transformers_pytorch import search_kernels as sk

    B, H, M, D, Q, held, chunk = 2, 4, 65536, 128, 1000, 50000, 16
    pairs = torch.randn(B, H, 2, M, D, device="cuda").to(dtype)
    keys = pairs[:, :, 0]  # the memory's strided layout
    count = torch.tensor([50000, 40007], device="cuda")
    worst = 1 + 0x1FFF * 2.0**-23  # all 13 bits below tf32's set
    for queries in (torch.randn(B, H, Q, D, device="cuda"), torch.full((B, H, Q, D), worst, device="cuda")):
        if queries[0, 0, 0, 0] == worst:
            keys = torch.full_like(keys, worst).to(dtype)
        assert sk.triton_usable(keys)
        got = sk.chunk_maxima(queries, keys, count, held, chunk)
        exact = queries.double() @ keys[:, :, :held].double().transpose(-1, -2)
        exact = exact.masked_fill(torch.arange(held, device="cuda") >= count.view(B, 1, 1, 1), float("-inf"))
        exact = torch.nn.functional.pad(exact, (0, -held % chunk), value=float("-inf")).unflatten(-1, (-1, chunk))
        exact = exact.amax(dim=-1)
        assert torch.equal(got == float("-inf"), exact == float("-inf"))
        finite = exact > float("-inf")
        bound = sk.score_error_bound(D) * queries.double().norm(dim=-1, keepdim=True) \
            * keys.double().norm(dim=-1).amax(dim=-1)[..., None, None]
        error = (got.double() - exact).abs()
        assert (error[finite] <= bound.expand_as(error)[finite]).all()
        if queries[0, 0, 0, 0] == worst and dtype == torch.float32:
            one_tf32_product = D * (worst**2 - 1.0)  # what cutting both factors to tf32 would lose
            assert error[finite].max() < one_tf32_product / 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_search_on_cuda_is_exact(dtype):
    """The Triton kernels of the fused search against the exact search: 4 heads, 60,000 unit keys in a 64K memory,
    one stream holding 40,007, 1,000 queries."""
    pytest.importorskip("triton")
    from memorizing_transformers_pytorch.search_kernels import triton_usable

    exact = KNNMemory(dim=64, max_memories=65536, num_indices=2, heads=4, index="exact")
    fused = KNNMemory(dim=64, max_memories=65536, num_indices=2, heads=4, index="fused")
    pairs = torch.nn.functional.normalize(torch.randn(2, 4, 60000, 2, 64, device="cuda"), dim=-1).to(dtype)
    mask = torch.ones(2, 60000, dtype=torch.bool, device="cuda")
    mask[1, 40007:] = False
    for memory in (exact, fused):
        memory.add(pairs, mask=mask)
    assert triton_usable(fused.keys)
    queries = torch.nn.functional.normalize(torch.randn(2, 4, 1000, 64, device="cuda"), dim=-1)
    want = exact.backend.search(exact.keys, exact.count, 60000, queries, 32)
    got = fused.backend.search(fused.keys, fused.count, 60000, queries, 32)
    keys = fused.keys.float()

    def scores(slots):
        return (torch.gather(keys, 2, slots.flatten(2)[..., None].expand(-1, -1, -1, 64)).view(2, 4, 1000, 32, 64)
                @ queries[..., None].float())[..., 0]

    torch.testing.assert_close(scores(got), scores(want), rtol=0, atol=1e-5)
    assert fused.backend.fallbacks == 0


def test_bf16_search_on_cuda_finds_the_float32_neighbours():
    """The bf16 index on the GPU: recall >= 0.99 against float32 exact search on random unit keys."""
    exact = KNNMemory(dim=64, max_memories=20000, num_indices=2, index="exact")
    bf16 = KNNMemory(dim=64, max_memories=20000, num_indices=2, index="bf16")
    pairs = torch.nn.functional.normalize(torch.randn(2, 16384, 2, 64, device="cuda"), dim=-1)
    for memory in (exact, bf16):
        memory.add(pairs)
    queries = torch.nn.functional.normalize(torch.randn(2, 1, 512, 64, device="cuda"), dim=-1)
    truth = exact.backend.search(exact.keys, exact.count, 16384, queries, 32)
    found = bf16.backend.search(bf16.keys, bf16.count, 16384, queries, 32)
    assert (found.unsqueeze(-1) == truth.unsqueeze(-2)).any(-1).float().mean().item() >= 0.99


def test_model_on_cuda_matches_cpu_over_segments():
    model = tiny_model(xl_max_memories=8, pad_id=0, clear_memories_on_sos_token_id=1)
    gpu_model = tiny_model(xl_max_memories=8, pad_id=0, clear_memories_on_sos_token_id=1)
    gpu_model.load_state_dict(model.state_dict())
    gpu_model.cuda()
    knn_cpu, knn_gpu = model.create_knn_memories(batch_size=2), gpu_model.create_knn_memories(batch_size=2)
    xl_cpu = xl_gpu = None
    for step in range(4):
        x = torch.randint(2, 32, (2, 8))
        if step == 2:
            x[0, 3] = 1
        out_cpu, xl_cpu = model(x, knn_memories=knn_cpu, xl_memories=xl_cpu)
        out_gpu, xl_gpu = gpu_model(x.cuda(), knn_memories=knn_gpu, xl_memories=xl_gpu)
        torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=2e-3, atol=2e-3)
    assert knn_gpu[0].count.tolist() == knn_cpu[0].count.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_training_on_cuda(dtype):
    model = tiny_model(xl_max_memories=8).cuda().train()
    knn = model.create_knn_memories(batch_size=2)
    xl = None
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(4):
        x = torch.randint(2, 32, (2, 8), device="cuda")
        with torch.autocast("cuda", dtype=dtype):
            loss, xl = model(x, knn_memories=knn, xl_memories=xl, labels=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert torch.isfinite(loss)
    assert knn[0].keys.dtype in (dtype, torch.float32)  # normalised keys may stay float32 under autocast


def test_bf16_weights_and_generation_on_cuda():
    model = tiny_model(xl_max_memories=4, pad_id=0).cuda().to(torch.bfloat16)
    out = model.generate(torch.randint(3, 32, (2, 9), device="cuda"), max_new_tokens=12, seq_len=4, temperature=0.0)
    assert out.tokens.shape == (2, 12) and out.tokens.is_cuda


def test_a_resumed_cuda_run_with_dropout_matches_an_uninterrupted_one(tmp_path):
    """Checkpoints carry the CUDA RNG state, so dropout masks after a resume are the ones the run would have drawn."""
    from memorizing_transformers_pytorch import MemorizingTransformerConfig
    from memorizing_transformers_pytorch.train import TrainConfig, train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"doc{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(10)))
    model = MemorizingTransformerConfig(num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,),
                                        max_knn_memories=64, num_retrieved_memories=4, xl_max_memories=16, pad_id=0,
                                        clear_memories_on_sos_token_id=2, attn_dropout=0.3, ff_dropout=0.3)

    def config(run):
        return TrainConfig(data=str(corpus), run_dir=str(run), seq_len=16, batch_size=2, steps=6, warmup_steps=2,
                           checkpoint_every=3, log_every=1, lr=3e-3, device="cuda")

    full = train(model, config(tmp_path / "a"), progress=False)["losses"]
    train(model, config(tmp_path / "b"), progress=False)
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-0000003\n")
    resumed = train(model, config(tmp_path / "b"), resume=True, progress=False)["losses"]
    assert resumed == full[3:]


def test_a_training_step_and_generation_make_no_host_sync_on_cuda():
    """Token checks, memory writes (FIFO, masks), clears and search bounds stay on the device."""
    model = tiny_model(xl_max_memories=8, pad_id=0, clear_memories_on_sos_token_id=1, knn_gate="mlp").cuda().train()
    knn = model.create_knn_memories(batch_size=2)
    x = torch.randint(2, 32, (2, 8), device="cuda")
    x[0, 3] = 1  # a document starts in row 0
    _, xl = model(x, knn_memories=knn)  # allocates the memory (first use may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss, xl = model(x, knn_memories=knn, xl_memories=xl, labels=x)
            loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


def _flex_pair(**overrides):
    """Two tiny CUDA models with the same weights: attention_kernel 'sdpa' and 'flex'."""
    sdpa = tiny_model(**overrides).cuda()
    flex = tiny_model(**overrides, attention_kernel="flex").cuda()
    flex.load_state_dict(sdpa.state_dict())
    return sdpa, flex


@pytest.mark.parametrize("gate", ["sigmoid", "joint", "mlp"])
def test_flex_attention_on_cuda_matches_sdpa_with_gradients(gate, monkeypatch):
    """Flex attention (compiled, with its backward; the joint softmax through log-sum-exps) against the dense
    mask on CUDA: the same losses and gradients over three segments with a kNN memory, an XL cache, a document
    boundary and grouped heads."""
    from memorizing_transformers_pytorch import masks

    monkeypatch.setattr(masks, "FLEX_MIN_QUERIES", 16)
    sdpa, flex = _flex_pair(knn_gate=gate, xl_max_memories=16, heads=4, kv_heads=2, dim_head=16,
                            clear_memories_on_sos_token_id=1,
                            token_shift=2)
    torch.manual_seed(0)
    x = torch.randint(3, 32, (2, 96), device="cuda")
    x[1, 40] = 1
    results = []
    for model in (sdpa, flex):
        model.train()
        state = model.new_state(batch_size=2, seq_len=32)
        total = 0.0
        for segment in x.split(32, dim=1):
            logits, state = model.step(segment, state)
            total = total + logits.float().square().mean()
        total.backward()
        results.append((total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-4)
    assert results[0][1].keys() == results[1][1].keys()
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)


def test_compiled_layers_on_cuda_match_eager_in_bf16():
    eager = tiny_model(xl_max_memories=16).cuda().train()
    compiled = tiny_model(xl_max_memories=16).cuda().train()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    torch.manual_seed(0)
    x = torch.randint(3, 32, (2, 96), device="cuda")
    losses = []
    for model in (eager, compiled):
        knn, xl, out = model.create_knn_memories(batch_size=2), None, []
        for segment in x.split(32, dim=1):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, xl = model(segment, knn_memories=knn, xl_memories=xl, labels=segment)
            loss.backward()
            out.append(loss.detach().float())
        losses.append(torch.stack(out))
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=2e-2)
