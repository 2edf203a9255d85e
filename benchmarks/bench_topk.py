"""The exact search's top-k, side by side in one process: one ``topk`` over each block of scores against the
two-stage ``chunked_topk`` (chunk maxima, then the best chunks' scores), which the search uses off the CPU.

    .venv/bin/python benchmarks/bench_topk.py [--device cpu] [--sizes 16384,65536] [--queries 1,512,4096]
        [--heads 4] [--k 32] [--reps 5] [--out benchmarks/results]

Each case fills 2 streams x ``--heads`` heads with unit keys (dim 64) and times ``exact_top_slots`` (the slot
search of the ``exact`` backend, without gathering the pairs) for each way, alternating, and checks that both
return the same scores. ``matmul share`` is the search's FLOP rate (``2 x streams x heads x queries x size x
dim``) over the device's dense bfloat16 matmul rate, measured in the same run (the issue's yardstick; the
search itself scores in float32).
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

WAYS = {"topk": False, "chunked": True}  # chunked_topk in every block long enough, or never (on any device)


def time_case(size: int, queries: int, args: argparse.Namespace) -> dict:
    device, dtype = args.device, getattr(torch, args.dtype)
    generator = torch.Generator(device=device).manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(2, args.heads, size, 64, device=device, generator=generator), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(2, args.heads, queries, 64, device=device, generator=generator), dim=-1)
    keys, q = keys.to(dtype), q.to(dtype)
    count = torch.full((2,), size, device=device)
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    found = {}
    saved = search.CHUNKED_TOPK_ON_CPU, search.CHUNKED_TOPK_MIN_CHUNKS
    try:
        for rep in range(args.reps + 1):  # the first round warms up
            for way in common.alternate(list(WAYS), rep):
                search.CHUNKED_TOPK_ON_CPU = WAYS[way]
                search.CHUNKED_TOPK_MIN_CHUNKS = saved[1] if WAYS[way] else 1 << 62
                ms = common.time_calls(lambda: search.exact_top_slots(keys, count, size, q, args.k), reps=1,
                                       warmup=0, device=device)
                if rep:
                    times[way] += ms
                found[way] = search.exact_top_slots(keys, count, size, q, args.k)
    finally:
        search.CHUNKED_TOPK_ON_CPU, search.CHUNKED_TOPK_MIN_CHUNKS = saved
    scores = {way: (q.float().unsqueeze(-2) @ keys.float().gather(2, s.flatten(2).unsqueeze(-1).expand(-1, -1, -1, 64))
                    .unflatten(2, (queries, args.k)).transpose(-1, -2)).squeeze(-2) for way, s in found.items()}
    same = torch.equal(scores["topk"].sort(-1).values, scores["chunked"].sort(-1).values)
    ms = {way: statistics.median(t) for way, t in times.items()}
    flops = 2 * 2 * args.heads * queries * size * 64
    return dict(size=size, queries=queries, topk_ms=ms["topk"], chunked_ms=ms["chunked"],
                speedup=ms["topk"] / ms["chunked"], chunked_tflops=flops / ms["chunked"] / 1e9, same_scores=same)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--sizes", default="16384,65536")
    parser.add_argument("--queries", default="1,512,4096", help="queries per stream and head")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    common.check_device(args.device)
    rate = common.matmul_tflops(args.device, "bfloat16", n=8192 if args.device.startswith("cuda") else 2048)
    rows = []
    for size in map(int, args.sizes.split(",")):
        for queries in map(int, args.queries.split(",")):
            row = time_case(size, queries, args)
            row["matmul_share"] = row["chunked_tflops"] / rate
            rows.append(row)
            common.log(f"size {size} queries {queries}: topk {row['topk_ms']:.2f} ms, chunked "
                       f"{row['chunked_ms']:.2f} ms ({row['speedup']:.2f}x)")
    columns = [("size", "memory"), ("queries", "queries per head"), ("topk_ms", "one topk (ms)"),
               ("chunked_ms", "chunked (ms)"), ("speedup", "speed-up"), ("matmul_share", "share of bf16 matmul"),
               ("same_scores", "same scores")]
    print(common.markdown_table(rows, columns))
    payload = dict(environment=common.environment(args.device), settings=vars(args) | {"out": str(args.out)},
                   bf16_matmul_tflops=rate, rows=rows)
    common.write_json(args.out / f"topk-{args.device.split(':')[0]}.json", payload)
    if not all(row["same_scores"] for row in rows):
        raise SystemExit("the two top-ks disagree")
    return payload


if __name__ == "__main__":
    main()
