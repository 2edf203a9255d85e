"""The fused search's Triton kernels (search_kernels.py) against their torch equivalents, run on CPU by Triton's
interpreter (TRITON_INTERPRET=1, in a fresh process: the setting is read when Triton is imported). On CUDA,
tests/test_gpu.py runs the compiled kernels."""

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("triton")

CHECK = textwrap.dedent("""
    import torch
    from memorizing_transformers_pytorch import search_kernels as sk

    kernels = sk._kernels()
    torch.manual_seed(0)
    B, H, M, D = 2, 3, 300, 16
    cases = 0
    for dtype in (torch.float32, torch.bfloat16):
        pairs = torch.randn(B, H, 2, M, D).to(dtype)  # the memory's layout: keys are a strided view
        keys = pairs[:, :, 0]
        count = torch.tensor([300, 70])
        for config in sk.MAXIMA_CONFIGS:
            for Q, held, chunk in ((5, 300, 16), (70, 130, 8), (1, 37, 32)):
                q = torch.randn(B, H, Q, D)
                chunks = -(-held // chunk)
                got = kernels.chunk_maxima(q.contiguous(), keys, count, held, chunk, chunks, config=config)
                exact = q.double() @ keys[:, :, :held].double().transpose(-1, -2)
                exact = exact.masked_fill(torch.arange(held) >= count.view(B, 1, 1, 1), float("-inf"))
                exact = torch.nn.functional.pad(exact, (0, chunks * chunk - held), value=float("-inf"))
                exact = exact.view(B, H, Q, chunks, chunk).amax(-1)
                assert got.shape == (B, H, Q, chunks), got.shape
                assert torch.equal(got == float("-inf"), exact == float("-inf")), (config, Q, held, chunk)
                finite = exact != float("-inf")
                bound = sk.score_error_bound(D) * q.double().norm(dim=-1, keepdim=True) \\
                    * keys.double().norm(dim=-1).amax(dim=-1)[..., None, None]
                assert ((got.double() - exact).abs()[finite] <= bound.expand_as(exact)[finite]).all(), config
                cases += 1
        for Q, chunk in ((5, 16), (70, 8)):
            q = torch.randn(B, H, Q, D)
            picked = torch.randint(0, -(-M // chunk), (B, H, Q, 5))
            got = kernels.chunk_scores(q.contiguous(), keys, count, picked.contiguous(), chunk)
            want = sk.chunk_scores(q, keys, count, picked, chunk)  # torch
            assert torch.equal(got == float("-inf"), want == float("-inf"))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    print("kernels match", cases)
""")


def test_triton_kernels_match_torch_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernels match" in result.stdout


def compile_for_h100(kernel, argument_types: dict, constants: dict, num_warps: int = 4, num_stages: int = 3):
    """``kernel`` compiled ahead of time for sm_90 (Triton ships ptxas; no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    signature = {name: argument_types.get(name, "constexpr" if name in constants else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=num_warps, num_stages=num_stages))


@pytest.mark.parametrize("dim, chunk, key_type", [(64, 16, "fp32"), (128, 16, "bf16"), (128, 64, "fp32"), (16, 1, "fp32")])
def test_the_kernels_compile_for_an_h100_and_use_tensor_cores(dim, chunk, key_type):
    """What the interpreter cannot show (it ignores the dot's precision): both kernels compile for sm_90, every
    first-stage tile shape tried at this width within an H100's 227 KiB of shared memory, and the first stage's
    dot is tf32x3 on tensor cores: three wgmma per 8 of the width (plain tf32: one), on heads split off by
    rounding (cvt.rna.tf32)."""
    from memorizing_transformers_pytorch import search_kernels as sk

    kernels = sk._kernels()
    pointers = dict(q_ptr="*fp32", k_ptr=f"*{key_type}", count_ptr="*i64", out_ptr="*fp32", picked_ptr="*i64",
                    sk_b="i64")  # a stream's stride in a large memory passes 2^31
    configs = sk.maxima_configs(dim)
    assert configs
    for queries, keys, tiles, warps, stages in configs:
        maxima = compile_for_h100(kernels.maxima, pointers, dict(D=dim, C=chunk, BQ=queries, BK=keys, TILES=tiles),
                                  num_warps=warps, num_stages=stages)
        assert maxima.metadata.shared <= 227 * 1024
        ptx = maxima.asm["ptx"]
        assert ptx.count("wgmma.mma_async") == 3 * dim // 8
        assert "cvt.rna.tf32" in ptx
    scores = compile_for_h100(kernels.scores, pointers, dict(D=dim, BQ=kernels.scores_block(chunk, dim), C=chunk))
    assert scores.metadata.shared <= 227 * 1024


def test_the_autotuner_tries_only_the_tile_shapes_that_fit():
    """On CUDA the first stage is autotuned over MAXIMA_CONFIGS; its pruning keeps those that fit at the width."""
    from memorizing_transformers_pytorch import search_kernels as sk

    tuned = sk._kernels().tuned
    for dim in (16, 64, 128):
        kept = tuned.early_config_prune(tuned.configs, {}, D=dim, C=16)
        shapes = [(c.kwargs["BQ"], c.kwargs["BK"], c.kwargs["TILES"], c.num_warps, c.num_stages) for c in kept]
        assert shapes == sk.maxima_configs(dim)
    assert len(sk.maxima_configs(128)) < len(sk.MAXIMA_CONFIGS) == len(sk.maxima_configs(64))
