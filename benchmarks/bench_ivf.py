"""Exact search vs the optional faiss IVF index of ``KNNMemory``: ms per search, recall@k, ms per add.

    python benchmarks/bench_ivf.py                          # 16K, 65K, 262K memories per row
    python benchmarks/bench_ivf.py --sizes 16384 --probes 4,16,64
    python benchmarks/bench_ivf.py --checkpoint runs/long/memory --sizes 16384,65536   # a trained model's keys

Same shapes as ``bench_memory.py``: 2 rows, 4,096 queries per row, dim 64, top-32,
clustered unit keys. Each memory is filled to capacity, then exact and IVF searches
alternate ``--reps`` times. Recall@k is the fraction of the exact top-k slots the IVF
search returns. Add: 512 new pairs per row into the full memory (FIFO eviction,
which for IVF also removes the evicted ids from the index). Needs the ``[faiss]``
extra. Writes ``benchmarks/results/ivf.json``.

With ``--checkpoint``, the keys, values and queries are a trained model's instead:
its first memorizing layer's (normalised) pairs and queries while it reads the
standard library's test files, concatenated into one stream per row (no document
resets, so the memory fills). The pairs are what the model wrote to its memory, in
order; the queries are those of its last 4,096 / (query heads per kv head) tokens.
This is the recall that matters for the model: a trained model's keys are neither
uniform nor as tightly clustered as the synthetic ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def trained_pairs_and_queries(checkpoint: str, rows: int, count: int, queries: int) -> tuple[Any, Any]:
    """``(rows, count, 2, Dh)`` pairs and ``(rows, queries, Dh)`` queries of a trained model's first
    memorizing layer, read from the standard library's test files (see the module docstring)."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from memorizing_transformers_pytorch.checkpoint import load_model
    from memorizing_transformers_pytorch.data import stdlib_documents

    model = load_model(checkpoint).eval()
    c = model.config
    if not c.memorizing_layers:
        raise SystemExit(f"{checkpoint}: the model has no memorizing layer")
    seq_len = 512
    G = c.heads // c.kv_heads
    tail_segments = -(-queries // (G * seq_len))
    total = count + seq_len * (tail_segments + 2) + c.xl_max_memories  # the memory lags the XL cache
    total = -(-total // seq_len) * seq_len
    text = np.concatenate(sorted(stdlib_documents("test"), key=len, reverse=True))
    if len(text) < rows * (total + 1):
        raise SystemExit(f"the test split holds {len(text):,} bytes; {rows} rows x {total:,} need more")
    stream = torch.from_numpy(text[: rows * total].astype(np.int64)).view(rows, total)
    memory = model.create_knn_memories(batch_size=rows, max_memories=count + seq_len * (tail_segments + 3))[0]
    added, searched = [], []
    add, search = memory.add, memory.search

    def recording_add(pairs, mask=None):
        added.append(pairs.detach().clone())
        return add(pairs, mask)

    def recording_search(q, k, **kwargs):
        searched.append(q.detach().clone())
        return search(q, k, **kwargs)

    memory.add, memory.search = recording_add, recording_search
    memories = [memory] + model.create_knn_memories(batch_size=rows)[1:]
    xl = None
    with torch.no_grad():
        for start in tqdm(range(0, total, seq_len), desc=f"reading {rows} x {total:,} bytes", leave=False):
            _, xl = model(stream[:, start : start + seq_len], knn_memories=memories, xl_memories=xl)
    pairs = torch.cat(added, dim=-3)  # (rows, [heads,] N, 2, Dh)
    q = torch.cat(searched[-tail_segments:], dim=-2)
    if pairs.dim() == 5:  # several kv heads: use the first
        pairs, q = pairs[:, 0], q[:, 0]
    if pairs.shape[1] < count + 512:
        raise SystemExit(f"only {pairs.shape[1]:,} pairs were written; need {count + 512:,}")
    # the memory: the count pairs written before the last 512 ahead of the query segments; those 512 are what
    # the benchmark adds afterwards (the searches see a memory that ends 512 pairs before the queries)
    before = pairs.shape[1] - seq_len * tail_segments
    return pairs[:, before - count - 512 : before].contiguous(), q[:, -queries:].contiguous()


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
    parser.add_argument("--checkpoint", default=None,
                        help="use a trained model's keys and queries (its run folder or checkpoint) instead of "
                             "synthetic clustered keys")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/ivf.json, or "
                                                    "ivf-trained.json with --checkpoint)")
    args = parser.parse_args()
    if args.out is None:
        args.out = str(ROOT / "benchmarks" / "results" / ("ivf-trained.json" if args.checkpoint else "ivf.json"))
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, dim = 2, 64
    stream = ClusteredStream(0, rows, dim, spread=args.spread)
    results = []
    for size in (int(s) for s in args.sizes.split(",")):
        if args.checkpoint:
            both, queries = trained_pairs_and_queries(args.checkpoint, rows, size, args.queries)
            pairs, extra = both[:, :size], both[:, size:]
            dim = pairs.shape[-1]
        else:
            queries = torch.from_numpy(stream.queries(args.queries))
            pairs = torch.from_numpy(stream.pairs(0, size))
            extra = torch.from_numpy(stream.pairs(size, 512))
        exact = KNNMemory(dim=dim, max_memories=size, num_indices=rows)
        exact.add(pairs)
        truth = exact.backend.search(exact.keys, exact.count, size, queries.unsqueeze(1), args.topk)
        for probe in (int(p) for p in args.probes.split(",")):
            started = time.perf_counter()
            ivf = KNNMemory(dim=dim, max_memories=size, num_indices=rows, index="ivf", ivf_lists=args.lists,
                            ivf_probe=probe)
            ivf.add(pairs)
            build = time.perf_counter() - started
            assert ivf.backend.name == "ivf" and ivf.backend.ready
            times: dict[str, list[float]] = {"exact": [], "ivf": []}
            for _ in range(args.reps):  # alternate, so that drift hits both
                for name, memory in (("exact", exact), ("ivf", ivf)):
                    t0 = time.perf_counter()
                    memory.search(queries, args.topk)
                    times[name].append(1000 * (time.perf_counter() - t0))
            found = ivf.backend.search(ivf.keys, ivf.count, size, queries.unsqueeze(1), args.topk)  # every row is trained: all IVF
            hits = sum(len(set(found[r, 0, q].tolist()) & set(truth[r, 0, q].tolist()))
                       for r in range(rows) for q in range(args.queries))
            recall = hits / (rows * args.queries * args.topk)
            add_ms = {}
            for name, memory in (("exact", exact), ("ivf", ivf)):
                t0 = time.perf_counter()
                memory.add(extra)
                add_ms[name] = 1000 * (time.perf_counter() - t0)
            row = {"memories": size, "lists": args.lists, "probe": probe,
                   "keys": f"trained ({args.checkpoint})" if args.checkpoint else f"clustered, spread {args.spread}",
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
