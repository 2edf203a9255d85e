"""The exact search's top-k, side by side in one process: one ``topk`` over each block of scores (``topk``), the
two-stage ``chunked_topk`` (chunk maxima, then the best chunks' scores; ``chunked``, what ``exact_top_slots`` does
off the CPU), and the ``fused`` backend (``search.FusedSearch``: Triton kernels on CUDA, torch code elsewhere;
below 16 queries per head it hands the call to the exact search, so its column there times that).

    .venv/bin/python benchmarks/bench_topk.py [--device cpu] [--sizes 16384,65536] [--queries 1,512,4096]
        [--heads 4] [--k 32] [--ways topk,chunked,fused] [--reps 5] [--out benchmarks/results]

Each case fills 2 streams x ``--heads`` heads with unit keys (dim 64) and times each way's slot search (no
gathering of the pairs), alternating, and checks that all return the same scores. ``share of bf16 matmul`` is a
way's FLOP rate (``2 x streams x heads x queries x size x dim``) over the device's dense bfloat16 matmul rate,
measured in the same run (the issue's yardstick; the searches score in float32 or tf32x3).
Results: a markdown table on stdout and JSON in ``--out``/topk-DEVICE.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from memorizing_transformers_pytorch import search  # noqa: E402

WAYS = ("topk", "chunked", "fused")


def searcher(way: str, fused: search.FusedSearch):
    """The slot search of ``way``: (keys, count, held, queries, k) -> slots."""
    if way == "fused":
        return fused.search

    def exact(keys, count, held, queries, k):
        saved = search.CHUNKED_TOPK_ON_CPU, search.CHUNKED_TOPK_MIN_CHUNKS
        search.CHUNKED_TOPK_ON_CPU = way == "chunked"
        search.CHUNKED_TOPK_MIN_CHUNKS = saved[1] if way == "chunked" else 1 << 62
        try:
            return search.exact_top_slots(keys, count, held, queries, k)
        finally:
            search.CHUNKED_TOPK_ON_CPU, search.CHUNKED_TOPK_MIN_CHUNKS = saved

    return exact


def time_case(size: int, queries: int, ways: list[str], args: argparse.Namespace) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(2, args.heads, size, 64, device=device, generator=generator), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(2, args.heads, queries, 64, device=device, generator=generator), dim=-1)
    keys = keys.to(dtype)
    count = torch.full((2,), size, device=device)
    fused = search.FusedSearch()
    functions = {way: searcher(way, fused) for way in ways}
    errors: dict[str, str] = {}
    for way in ways:  # a way that fails (e.g. a kernel that does not build on this GPU) is reported, not fatal
        try:
            functions[way](keys, count, size, q, args.k)
        except Exception as error:  # noqa: BLE001
            errors[way] = repr(error)[:500]
            common.log(f"{way} failed: {errors[way]}")
    working = [way for way in ways if way not in errors]
    times: dict[str, list[float]] = {way: [] for way in working}
    found = {}
    for rep in range(args.reps + 1):  # the first round warms up
        for way in common.alternate(working, rep):
            ms = common.time_calls(lambda: functions[way](keys, count, size, q, args.k), reps=1, warmup=0,
                                   device=device)
            if rep:
                times[way] += ms
            found[way] = functions[way](keys, count, size, q, args.k)
    scores = {way: _scores(keys, s, q) for way, s in found.items()}
    row = dict(size=size, queries=queries, errors=errors)
    if working:
        reference = scores[working[0]]
        row["same_scores"] = all(torch.allclose(scores[way], reference, rtol=0, atol=1e-5) for way in working)
    if "fused" in working:
        row["fused_fallbacks"] = f"{fused.fallbacks} of {fused.searches}"
        row.update(fused_stages(keys, count, size, q, args.k, fused, args))
    flops = 2 * 2 * args.heads * queries * size * 64
    for way in working:
        ms = statistics.median(times[way])
        row[f"{way}_ms"] = ms
        row[f"{way}_tflops"] = flops / ms / 1e9
    return row


def fused_stages(keys, count, size, q, k, fused: search.FusedSearch, args: argparse.Namespace) -> dict:
    """Where the fused search's time goes: its first stage (chunk maxima), then the rest (top chunks, exact
    scores, top-k), each timed alone (median of ``--reps``)."""
    from memorizing_transformers_pytorch.search_kernels import chunk_maxima, chunk_scores

    maxima = chunk_maxima(q, keys, count, size, fused.chunk)

    def rest():
        _, picked = maxima.topk(min(maxima.shape[-1], fused.chunks_per_k * k), dim=-1)
        return chunk_scores(q, keys, count, picked, fused.chunk).topk(k, dim=-1)

    stage1 = common.time_calls(lambda: chunk_maxima(q, keys, count, size, fused.chunk), reps=args.reps,
                               device=args.device)
    stage2 = common.time_calls(rest, reps=args.reps, device=args.device)
    return dict(fused_stage1_ms=statistics.median(stage1), fused_stage2_ms=statistics.median(stage2))


def _scores(keys: torch.Tensor, slots: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Sorted float32 scores of the slots each query got."""
    B, H, Q, k = slots.shape
    gathered = keys.float().gather(2, slots.clamp(min=0).flatten(2).unsqueeze(-1).expand(-1, -1, -1, keys.shape[-1]))
    return (gathered.view(B, H, Q, k, -1) @ q.float().unsqueeze(-1)).squeeze(-1).sort(dim=-1).values


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--sizes", default="16384,65536")
    parser.add_argument("--queries", default="1,512,4096", help="queries per stream and head")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--ways", default=",".join(WAYS), help=f"comma-separated, from {', '.join(WAYS)}")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    ways = args.ways.split(",")
    if unknown := sorted(set(ways) - set(WAYS)):
        parser.error(f"unknown ways {unknown}; choose from {', '.join(WAYS)}")
    common.check_device(args.device)
    rate = common.matmul_tflops(args.device, "bfloat16", n=8192 if args.device.startswith("cuda") else 2048)
    rows = []
    for size in map(int, args.sizes.split(",")):
        for queries in map(int, args.queries.split(",")):
            row = time_case(size, queries, ways, args)
            for way in ways:
                if f"{way}_tflops" in row:
                    row[f"{way}_share"] = row[f"{way}_tflops"] / rate
            rows.append(row)
            common.log(f"size {size} queries {queries}: " + ", ".join(
                f"{way} {row[way + '_ms']:.2f} ms" if way + "_ms" in row else f"{way} failed" for way in ways))
    columns = [("size", "memory"), ("queries", "queries per head")]
    columns += [(f"{way}_ms", f"{way} (ms)") for way in ways]
    columns += [(f"{way}_share", f"{way}: share of bf16 matmul") for way in ways] + [("same_scores", "same scores")]
    if "fused" in ways:
        columns += [("fused_fallbacks", "fused fallbacks"), ("fused_stage1_ms", "fused stage 1 (ms)"),
                    ("fused_stage2_ms", "fused stage 2 (ms)")]
    print(common.markdown_table(rows, columns))
    payload = dict(environment=common.environment(args.device), settings=vars(args) | {"out": str(args.out)},
                   bf16_matmul_tflops=rate, rows=rows)
    common.write_json(args.out / f"topk-{args.device.split(':')[0]}.json", payload)
    if not all(row.get("same_scores", True) for row in rows):
        raise SystemExit("the ways disagree")
    if any(row["errors"] for row in rows):
        raise SystemExit(f"some ways failed: {sorted({way for row in rows for way in row['errors']})}")
    return payload


if __name__ == "__main__":
    main()
