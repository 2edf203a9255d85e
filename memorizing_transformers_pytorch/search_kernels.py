"""The two stages of the ``fused`` search (``search.FusedSearch``), as Triton kernels for CUDA and as torch code.

The memory's slots are cut into chunks of ``chunk`` consecutive slots. Per query:

1. ``chunk_maxima``: the largest score in each chunk. The Triton kernel computes a tile of scores on chip with
   tensor cores in ``tf32x3`` (each float32 factor split into a tf32 head and a tf32 tail, three products:
   about 2^-20 relative error, where one tf32 product has 2^-10), masks the slots past the stream's count, and
   writes only each chunk's maximum: ``chunk`` times fewer bytes than the scores, which a plain search writes
   and reads back several times (``exact_top_slots``: matmul, mask, top-k).
2. ``chunk_scores``: the exact float32 scores of the slots of a few chunks per query (the chunks whose maxima
   are largest), computed from the keys as stored (without tensor cores).

Elsewhere (CPU, or no Triton) the same results come from torch; stage 1 then splits and cuts its inputs as the
tensor cores do (``tf32_split``), so that the CPU tests see errors of the kernel's kind, and the bound its
caller relies on (``score_error_bound``) is tested against them. ``triton_usable`` says which runs.

Shapes: B streams, H heads, Q queries, M slots (``held`` of them looked at), D features, P chunks per query.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

__all__ = ["triton_usable", "tf32_split", "tf32x3_scores", "score_error_bound", "chunk_maxima", "chunk_scores",
           "MAXIMA_CONFIGS", "maxima_configs"]

NEG_INF = float("-inf")
TORCH_BLOCK_ELEMENTS = 1 << 23  # the torch code's temporaries (scores, gathered keys) per block of queries
# the first stage's tile shapes: (queries, keys per tile, tiles per program, warps, pipeline stages); keys per
# tile >= 64 >= a chunk. At width 128, tiles of 128 keys need more than an H100's 227 KiB of shared memory
# (compiled for sm_90: 256 KiB), so they are tried only up to width 64 (``maxima_configs``).
MAXIMA_CONFIGS = ((64, 64, 4, 4, 3), (128, 64, 4, 8, 2), (64, 128, 2, 4, 2), (128, 128, 2, 8, 1), (64, 64, 1, 4, 1))


def maxima_configs(dim: int) -> list[tuple[int, int, int, int, int]]:
    """The first stage's tile shapes that fit an H100 at width ``dim``."""
    return [config for config in MAXIMA_CONFIGS if dim <= 64 or config[1] <= 64]


def triton_usable(keys: Tensor) -> bool:
    """Whether the Triton kernels run for these keys: on CUDA, Triton importable, D a power of two from 16 to 128
    (at 256 the first kernel spills registers, at 512 it needs more shared memory than an H100 has), features
    contiguous."""
    D = keys.shape[-1]
    return keys.is_cuda and 16 <= D <= 128 and D & (D - 1) == 0 and keys.stride(-1) == 1 and _triton() is not None


@functools.cache
def _triton():
    try:
        import triton  # noqa: F401
    except ImportError:
        return None
    return _kernels()


def _cut_to_tf32(x: Tensor) -> Tensor:
    """float32 ``x`` with the 10 mantissa bits of tf32, the rest cut off (truncation: the worse of what the
    hardware may do; at most 2^-10 relative)."""
    return (x.contiguous().view(torch.int32) & ~0x1FFF).view(torch.float32)


def tf32_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` (as float32) = head + tail + rest: head and tail tf32 numbers, ``|rest| <= 2^-20 |x|``."""
    x = x.float()
    head = _cut_to_tf32(x)
    return head, _cut_to_tf32(x - head)


def tf32x3_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """``queries @ keys^T`` as ``tf32x3`` tensor cores compute it: head.head + head.tail + tail.head."""
    qh, qt = tf32_split(queries)
    kh, kt = (part.transpose(-1, -2) for part in tf32_split(keys))
    return qh @ kh + (qh @ kt + qt @ kh)


def score_error_bound(dim: int) -> float:
    """A bound on ``|stage-1 score - exact score| / (|q| |k|)``. Per term, tf32x3 drops ``head.rest``,
    ``tail.tail``, ``tail.rest``, ``rest.*``: at most ``3 * 2^-20 + 2^-20`` relative; float32 accumulation of
    ``3 dim`` terms adds at most ``3 dim 2^-23``; all doubled for safety (Cauchy-Schwarz turns sum |q_i k_i| into
    |q| |k|). bfloat16 keys are read exactly (their tail is 0), which only helps."""
    return 2 * (4 * 2.0**-20 + 3 * dim * 2.0**-23)


def chunk_maxima(queries: Tensor, keys: Tensor, count: Tensor, held: int, chunk: int) -> Tensor:
    """Stage 1: ``(B, H, Q, ceil(held / chunk))`` float32, the largest tf32x3 score of each chunk of slots;
    ``-inf`` for slots at or past a stream's ``count``.

    Args:
        queries: ``(B, H, Q, D)``; keys: ``(B, H, M, D)`` float32 or bfloat16; count: ``(B,)``; held: slots
            looked at (``count <= held <= M``); chunk: slots per chunk, a power of two <= 64.
    """
    B, H, Q, D = queries.shape
    chunks = math.ceil(held / chunk)
    if triton_usable(keys):
        with torch.cuda.device(keys.device):
            return _triton().chunk_maxima(queries.float().contiguous(), keys, count, held, chunk, chunks)
    out = torch.empty(B, H, Q, chunks, device=keys.device)
    empty = torch.arange(held, device=keys.device) >= count.view(B, 1, 1, 1)
    q_block = max(1, min(Q, TORCH_BLOCK_ELEMENTS // (B * H * held)))  # each temporary holds ~q_block x held scores
    for start in range(0, Q, q_block):
        scores = tf32x3_scores(queries[:, :, start : start + q_block], keys[:, :, :held]).masked_fill(empty, NEG_INF)
        scores = torch.nn.functional.pad(scores, (0, chunks * chunk - held), value=NEG_INF)
        out[:, :, start : start + q_block] = scores.unflatten(-1, (chunks, chunk)).amax(dim=-1)
    return out


def chunk_scores(queries: Tensor, keys: Tensor, count: Tensor, picked: Tensor, chunk: int) -> Tensor:
    """Stage 2: ``(B, H, Q, P * chunk)`` float32 exact scores of the slots of chunks ``picked (B, H, Q, P)``, in
    order (chunk ``p``'s slot ``j`` at ``p * chunk + j``); ``-inf`` at or past a stream's count or the keys' end."""
    B, H, Q, D = queries.shape
    P = picked.shape[-1]
    if triton_usable(keys):
        with torch.cuda.device(keys.device):
            return _triton().chunk_scores(queries.float().contiguous(), keys, count, picked.contiguous(), chunk)
    M = keys.shape[2]
    slots = (picked.unsqueeze(-1) * chunk + torch.arange(chunk, device=keys.device)).flatten(-2)  # (B, H, Q, P*C)
    out = torch.empty(B, H, Q, P * chunk, device=keys.device)
    q_block = max(1, min(Q, TORCH_BLOCK_ELEMENTS // (B * H * P * chunk * D)))  # the gathered keys per block
    for start in range(0, Q, q_block):
        part = slots[:, :, start : start + q_block]
        n = part.shape[2]
        rows = part.clamp(max=M - 1).reshape(B, H, n * P * chunk, 1).expand(-1, -1, -1, D)
        gathered = keys.gather(2, rows).view(B, H, n, P * chunk, D).float()
        out[:, :, start : start + n] = torch.einsum("bhqd,bhqsd->bhqs", queries[:, :, start : start + n].float(), gathered)
    return out.masked_fill(slots >= count.view(B, 1, 1, 1).clamp(max=M), NEG_INF)


def _kernels():
    """The Triton kernels and their launchers (built on first use: importing Triton costs a second)."""
    import triton
    import triton.language as tl

    @triton.jit
    def maxima_kernel(q_ptr, k_ptr, count_ptr, out_ptr, H, Q, held, chunks,
                      sq_b, sq_h, sq_q, sk_b, sk_h, sk_m, so_b, so_h, so_q,
                      D: tl.constexpr, C: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr, TILES: tl.constexpr):
        # a program: BQ queries (loaded once) against TILES consecutive tiles of BK keys
        bh = tl.program_id(2)
        b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
        rq = tl.program_id(1) * BQ + tl.arange(0, BQ)
        rd = tl.arange(0, D)
        n = tl.minimum(tl.load(count_ptr + b), held)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rq[:, None] * sq_q + rd[None, :], mask=rq[:, None] < Q, other=0.0)
        first = tl.program_id(0).to(tl.int64) * TILES * BK  # key tiles on axis 0: up to 2^31 - 1 programs
        for tile in tl.range(0, TILES):
            rk = first + tile * BK + tl.arange(0, BK)
            k = tl.load(k_ptr + b * sk_b + h * sk_h + rk[:, None] * sk_m + rd[None, :],
                        mask=rk[:, None] < n, other=0.0).to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="tf32x3")  # (BQ, BK), float32 accumulation
            s = tl.where(rk[None, :] < n, s, float("-inf"))
            m = tl.max(tl.reshape(s, (BQ, BK // C, C)), axis=2)
            rc = (first + tile * BK) // C + tl.arange(0, BK // C)
            tl.store(out_ptr + b * so_b + h * so_h + rq[:, None].to(tl.int64) * so_q + rc[None, :], m,
                     mask=(rq[:, None] < Q) & (rc[None, :] < chunks))

    # tile shapes tried on a GPU's first call per (width, chunk) (autotuning: none was measured on a GPU yet);
    # the interpreter and the ahead-of-time compile test take each explicitly
    configs = [triton.Config(dict(BQ=bq, BK=bk, TILES=tiles), num_warps=warps, num_stages=stages)
               for bq, bk, tiles, warps, stages in MAXIMA_CONFIGS]

    def fitting(configs, named_args, **kwargs):
        dim = kwargs.get("D", named_args.get("D"))
        keep = maxima_configs(dim)
        return [c for c in configs if (c.kwargs["BQ"], c.kwargs["BK"], c.kwargs["TILES"], c.num_warps, c.num_stages)
                in keep]

    maxima_tuned = triton.autotune(configs, key=["D", "C"], prune_configs_by=dict(early_config_prune=fitting))(
        maxima_kernel)

    @triton.jit
    def scores_kernel(q_ptr, k_ptr, count_ptr, picked_ptr, out_ptr, H, Q, M, P,
                      sq_b, sq_h, sq_q, sk_b, sk_h, sk_m, sp_b, sp_h, sp_q, so_b, so_h, so_q,
                      D: tl.constexpr, BQ: tl.constexpr, C: tl.constexpr):
        bh = tl.program_id(2)
        p = tl.program_id(1)
        b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)
        rq = tl.program_id(0) * BQ + tl.arange(0, BQ)
        rc = tl.arange(0, C)
        rd = tl.arange(0, D)
        n = tl.minimum(tl.load(count_ptr + b), M)
        chunk_id = tl.load(picked_ptr + b * sp_b + h * sp_h + rq * sp_q + p, mask=rq < Q, other=0)
        slot = chunk_id[:, None].to(tl.int64) * C + rc[None, :]  # (BQ, C)
        valid = (rq[:, None] < Q) & (slot < n)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rq[:, None] * sq_q + rd[None, :], mask=rq[:, None] < Q, other=0.0)
        k = tl.load(k_ptr + b * sk_b + h * sk_h + slot[:, :, None] * sk_m + rd[None, None, :],
                    mask=valid[:, :, None], other=0.0).to(tl.float32)  # (BQ, C, D)
        s = tl.sum(k * q[:, None, :], axis=2)
        s = tl.where(valid, s, float("-inf"))
        tl.store(out_ptr + b * so_b + h * so_h + rq[:, None].to(tl.int64) * so_q + p * C + rc[None, :], s,
                 mask=rq[:, None] < Q)

    class Kernels:
        maxima = maxima_kernel  # the kernels themselves, for an ahead-of-time compile (tests/test_search_kernels.py)
        scores = scores_kernel
        tuned = maxima_tuned

        @staticmethod
        def chunk_maxima(q: Tensor, keys: Tensor, count: Tensor, held: int, chunk: int, chunks: int,
                         config: tuple[int, int, int, int, int] | None = None) -> Tensor:
            """Launches the first stage: autotuned, or with ``config`` (one of ``MAXIMA_CONFIGS``)."""
            B, H, Q, D = q.shape
            out = torch.empty(B, H, Q, chunks, device=q.device, dtype=torch.float32)

            def grid(meta):
                return triton.cdiv(held, meta["BK"] * meta["TILES"]), triton.cdiv(Q, meta["BQ"]), B * H

            arguments = (q, keys, count, out, H, Q, held, chunks, *q.stride()[:3], *keys.stride()[:3],
                         *out.stride()[:3])
            if config is None:
                maxima_tuned[grid](*arguments, D=D, C=chunk)
            else:
                bq, bk, tiles, warps, stages = config
                maxima_kernel[grid](*arguments, D=D, C=chunk, BQ=bq, BK=bk, TILES=tiles, num_warps=warps,
                                    num_stages=stages)
            return out

        @staticmethod
        def scores_block(chunk: int, D: int) -> int:
            """Queries per program of the scores kernel: its (queries, chunk, D) block holds 8K floats."""
            return max(1, min(16, 8192 // (chunk * D)))

        @staticmethod
        def chunk_scores(q: Tensor, keys: Tensor, count: Tensor, picked: Tensor, chunk: int) -> Tensor:
            B, H, Q, D = q.shape
            P = picked.shape[-1]
            out = torch.empty(B, H, Q, P * chunk, device=q.device, dtype=torch.float32)
            BQ = Kernels.scores_block(chunk, D)
            grid = (triton.cdiv(Q, BQ), P, B * H)
            scores_kernel[grid](q, keys, count, picked, out, H, Q, keys.shape[2], P, *q.stride()[:3],
                                *keys.stride()[:3], *picked.stride()[:3], *out.stride()[:3], D=D, BQ=BQ, C=chunk)
            return out

    return Kernels
