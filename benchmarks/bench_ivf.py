"""Exact search vs the optional faiss IVF index of ``KNNMemory``: ms per search, recall@k, ms per add.

    python benchmarks/bench_ivf.py                          # 16K, 65K, 262K memories per row
    python benchmarks/bench_ivf.py --sizes 16384 --probes 4,16,64

Same shapes as ``bench_memory.py``: 2 rows, 4,096 queries per row, dim 64, top-32,
clustered unit keys. Each memory is filled to capacity, then exact and IVF searches
alternate ``--reps`` times. Recall@k is the fraction of the exact top-k slots the IVF
search returns. Add: 512 new pairs per row into the full memory (FIFO eviction,
which for IVF also removes the evicted ids from the index). Needs the ``[faiss]``
extra. Writes ``benchmarks/results/ivf.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import torch
    from bench_memory import ClusteredStream

    from memorizing_transformers_pytorch import KNNMemory

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16384,65536,262144")
    parser.add_argument("--lists", type=int, default=256)
    parser.add_argument("--probes", default="8,32")
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--spread", type=float, default=0.1,
                        help="per-dimension spread of the key clusters (larger = harder for IVF; 0.1 as bench_memory)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ivf.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, dim = 2, 64
    stream = ClusteredStream(0, rows, dim, spread=args.spread)
    queries = torch.from_numpy(stream.queries(args.queries))
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        pairs = torch.from_numpy(stream.pairs(0, size))
        extra = torch.from_numpy(stream.pairs(size, 512))
        exact = KNNMemory(dim=dim, max_memories=size, num_indices=rows)
        exact.add(pairs)
        truth = exact._top_indices(queries.unsqueeze(1), args.topk)
        for probe in (int(p) for p in args.probes.split(",")):
            started = time.perf_counter()
            ivf = KNNMemory(dim=dim, max_memories=size, num_indices=rows, index="ivf", ivf_lists=args.lists,
                            ivf_probe=probe)
            ivf.add(pairs)
            build = time.perf_counter() - started
            assert ivf._ivf is not None and ivf._ivf.ready
            times: dict[str, list[float]] = {"exact": [], "ivf": []}
            for _ in range(args.reps):  # alternate, so that drift hits both
                for name, memory in (("exact", exact), ("ivf", ivf)):
                    t0 = time.perf_counter()
                    memory.search(queries, args.topk)
                    times[name].append(1000 * (time.perf_counter() - t0))
            found = ivf._ivf.search(queries.unsqueeze(1), args.topk, list(range(rows)))
            hits = sum(len(set(found[r, 0, q].tolist()) & set(truth[r, 0, q].tolist()))
                       for r in range(rows) for q in range(args.queries))
            recall = hits / (rows * args.queries * args.topk)
            add_ms = {}
            for name, memory in (("exact", exact), ("ivf", ivf)):
                t0 = time.perf_counter()
                memory.add(extra)
                add_ms[name] = 1000 * (time.perf_counter() - t0)
            row = {"memories": size, "lists": args.lists, "probe": probe, "spread": args.spread,
                   "exact_ms": statistics.median(times["exact"]), "ivf_ms": statistics.median(times["ivf"]),
                   "recall_at_k": recall, "ivf_build_s": build, "add_exact_ms": add_ms["exact"],
                   "add_ivf_ms": add_ms["ivf"]}
            row["speedup"] = row["exact_ms"] / row["ivf_ms"]
            results.append(row)
            print(f"{size:>7} probe {probe:>3}: exact {row['exact_ms']:8.1f} ms | ivf {row['ivf_ms']:8.1f} ms "
                  f"({row['speedup']:.2f}x) | recall@{args.topk} {recall:.3f} | build {build:.1f}s | "
                  f"add 512: exact {add_ms['exact']:.1f} ms, ivf {add_ms['ivf']:.1f} ms", flush=True)
            exact = KNNMemory(dim=dim, max_memories=size, num_indices=rows)  # undo the add for the next probe
            exact.add(pairs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"results": results, "args": vars(args),
                                          "torch_threads": torch.get_num_threads()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
