"""The bf16 search (``knn_index="bf16"``) against float32 exact search: recall@k and ms per search.

    python benchmarks/bench_bf16_search.py [--sizes 16384,65536] [--queries 512,4] [--candidates 2,4,8]
        [--device cpu] [--threads 1] [--reps 5]

2 rows, dim 64, top-32, memories filled to capacity with unit keys of three kinds: ``random`` (normalised
Gaussian), ``clustered`` (the mixture of 256 Gaussians of ``bench_memory.py``, spread 0.1) and ``tight`` (the
same with spread 0.01: neighbours' scores differ by about bfloat16's resolution, so rounding reorders them).
Queries come from the same distribution. ``--queries`` per row and memory head: 512 is a training or evaluation segment, 4 a generated
token (4 query heads sharing one key/value head). Both searches are ``KNNMemory`` backends asked for slots only
(no gather of the pairs), alternating ``--reps`` times; the bf16 search reads the bfloat16 copy of the keys that
the memory keeps up to date. Recall@k is the share of the float32 top-k slots the bf16 search returns. Writes
``benchmarks/results/bf16_search.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import ClusteredStream  # noqa: E402

from memorizing_transformers_pytorch import KNNMemory  # noqa: E402
from memorizing_transformers_pytorch.search import BFloat16Search  # noqa: E402


def keys_and_queries(kind: str, rows: int, size: int, queries: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, size, 2, dim)`` pairs with unit keys, and ``(rows, queries, dim)`` unit queries."""
    if kind in ("clustered", "tight"):
        stream = ClusteredStream(0, rows, dim, spread=0.1 if kind == "clustered" else 0.01)
        return torch.from_numpy(stream.pairs(0, size)), torch.from_numpy(stream.queries(queries))
    generator = torch.Generator().manual_seed(0)
    pairs = torch.randn(rows, size, 2, dim, generator=generator)
    pairs[:, :, 0] = torch.nn.functional.normalize(pairs[:, :, 0], dim=-1)
    return pairs, torch.nn.functional.normalize(torch.randn(rows, queries, dim, generator=generator), dim=-1)


def timed_ms(search, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    search()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="16384,65536")
    parser.add_argument("--queries", default="512,4", help="queries per row, comma-separated")
    parser.add_argument("--candidates", default="2,4,8", help="candidates per neighbour (c: top c*k in bfloat16)")
    parser.add_argument("--kinds", default="random,clustered,tight")
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_search.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, dim, k = 2, 64, args.topk
    results = []
    print("| keys | memories | queries/row | c | recall@k | exact ms | bf16 ms | bf16 / exact |\n"
          "|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for size in (int(s) for s in args.sizes.split(",")):
            for num_queries in (int(q) for q in args.queries.split(",")):
                pairs, queries = keys_and_queries(kind, rows, size, num_queries, dim)
                queries = queries.unsqueeze(1).to(args.device)  # (rows, 1 head, Q, dim)
                exact = KNNMemory(dim=dim, max_memories=size, num_indices=rows, index="exact")
                exact.add(pairs.to(args.device))
                truth = exact.backend.search(exact.keys, exact.count, size, queries, k)
                for c in (int(c) for c in args.candidates.split(",")):
                    bf16 = KNNMemory(dim=dim, max_memories=size, num_indices=rows, index="bf16")
                    bf16.backend = BFloat16Search(candidates_per_k=c)
                    bf16.add(pairs.to(args.device))
                    found = bf16.backend.search(bf16.keys, bf16.count, size, queries, k)
                    recall = (found.unsqueeze(-1) == truth.unsqueeze(-2)).any(-1).float().mean().item()
                    times: dict[str, list[float]] = {"exact": [], "bf16": []}
                    for _ in range(args.reps):  # alternate, so that drift hits both
                        for name, memory in (("exact", exact), ("bf16", bf16)):
                            search = lambda m=memory: m.backend.search(m.keys, m.count, size, queries, k)
                            times[name].append(timed_ms(search, args.device))
                    row = {"keys": kind, "memories": size, "queries_per_row": num_queries, "candidates_per_k": c,
                           "recall_at_k": recall, "exact_ms": statistics.median(times["exact"]),
                           "bf16_ms": statistics.median(times["bf16"])}
                    row["bf16_over_exact"] = row["bf16_ms"] / row["exact_ms"]
                    results.append(row)
                    print(f"| {kind} | {size:,} | {num_queries} | {c} | {recall:.4f} | {row['exact_ms']:.2f} | "
                          f"{row['bf16_ms']:.2f} | {row['bf16_over_exact']:.2f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    payload = {"device": args.device, "torch_threads": torch.get_num_threads(), "topk": k, "rows": rows, "dim": dim,
               "results": results}
    Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
