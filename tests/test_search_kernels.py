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
    B, H, M, D = 2, 3, 200, 16
    for dtype in (torch.float32, torch.bfloat16):
        pairs = torch.randn(B, H, 2, M, D).to(dtype)  # the memory's layout: keys are a strided view
        keys = pairs[:, :, 0]
        count = torch.tensor([200, 70])
        for Q, held, chunk in ((5, 200, 16), (70, 130, 8), (1, 37, 32)):
            q = torch.randn(B, H, Q, D)
            chunks = -(-held // chunk)
            if dtype == torch.bfloat16:  # the interpreter's bfloat16 tl.dot returns garbage (numpy has no bf16)
                dtype_keys = keys.float()   # tests/test_gpu.py checks bfloat16 on CUDA
            else:
                dtype_keys = keys
            got = kernels.chunk_maxima(q.to(dtype).float().contiguous(), dtype_keys, count, held, chunk, chunks)
            want = sk.chunk_maxima(q, keys, count, held, chunk)  # torch, inputs rounded as tensor cores do
            exact = (q.to(dtype).float() @ keys[:, :, :held].float().transpose(-1, -2))
            exact = exact.masked_fill(torch.arange(held) >= count.view(B, 1, 1, 1), float("-inf"))
            exact = torch.nn.functional.pad(exact, (0, chunks * chunk - held), value=float("-inf"))
            exact = exact.view(B, H, Q, chunks, chunk).amax(-1)
            assert got.shape == want.shape == (B, H, Q, chunks), (got.shape, want.shape)
            assert torch.equal(got == float("-inf"), want == float("-inf"))
            finite = want != float("-inf")
            bound = sk.score_error_bound(D) * q.norm(dim=-1, keepdim=True) * keys.float().norm(dim=-1).amax()
            bound = bound.expand_as(got)[finite]
            assert ((got[finite] - exact[finite]).abs() <= bound).all()
            picked = torch.randint(0, chunks, (B, H, Q, 5))
            got = kernels.chunk_scores(q.float().contiguous(), keys, count, picked.contiguous(), chunk)
            want = sk.chunk_scores(q, keys, count, picked, chunk)
            assert torch.equal(got == float("-inf"), want == float("-inf"))
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    print("kernels match")
""")


def test_triton_kernels_match_torch_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "kernels match" in result.stdout


def compile_for_h100(kernel, argument_types: dict, constants: dict):
    """``kernel`` compiled ahead of time for sm_90 (Triton ships ptxas; no GPU needed)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile

    signature = {name: argument_types.get(name, "constexpr" if name in constants else "i32") for name in kernel.arg_names}
    source = ASTSource(fn=kernel, signature=signature,
                       constexprs={(kernel.arg_names.index(name),): value for name, value in constants.items()})
    return compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4, num_stages=3))


@pytest.mark.parametrize("dim, chunk, key_type", [(64, 16, "fp32"), (128, 16, "bf16"), (128, 64, "fp32"), (16, 1, "fp32")])
def test_the_kernels_compile_for_an_h100_and_use_tensor_cores(dim, chunk, key_type):
    """What the interpreter cannot show (it ignores the dot's precision): both kernels compile for sm_90 within an
    H100's 227 KiB of shared memory, and the first stage's dot is tf32x3 on tensor cores: three wgmma per 8 of the
    width (plain tf32: one), on heads split off by rounding (cvt.rna.tf32)."""
    from memorizing_transformers_pytorch import search_kernels as sk

    kernels = sk._kernels()
    pointers = dict(q_ptr="*fp32", k_ptr=f"*{key_type}", count_ptr="*i64", out_ptr="*fp32", picked_ptr="*i64",
                    sk_b="i64")  # a stream's stride in a large memory passes 2^31
    tile = sk.MAXIMA_TILE
    maxima = compile_for_h100(kernels.maxima, pointers, dict(D=dim, BQ=tile, BK=max(tile, chunk), C=chunk))
    scores = compile_for_h100(kernels.scores, pointers, dict(D=dim, BQ=kernels.scores_block(chunk, dim), C=chunk))
    for compiled in (maxima, scores):
        assert compiled.metadata.shared <= 227 * 1024
    ptx = maxima.asm["ptx"]
    assert ptx.count("wgmma.mma_async") == 3 * dim // 8
    assert "cvt.rna.tf32" in ptx
