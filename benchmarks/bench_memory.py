"""KNNMemory benchmark: ours (exact, torch) against the reference package 0.4.1 (faiss HNSW).

For each memory size N (pairs per row), in a fresh process per (implementation, N):

* fill the memory with N clustered, L2-normalised keys per row (a mixture of Gaussians,
  like real attention keys; the same data in both processes, from a fixed numpy seed),
* time ``add`` of 512 new (key, value) pairs per row (ours: the memory is full, so each
  add evicts the 512 oldest pairs; the reference cannot evict, see below),
* time ``search`` of 2 rows x 4,096 queries, dim 64, top-32 (ours also alone: the top-k slot search without
  gathering the returned pairs, which is 134 MB of output at these sizes),
* record the peak RSS (``ru_maxrss``) of the process (and peak GPU memory on CUDA),
* compute recall@32 against exact brute force for a subset of the queries: the fraction of
  the true top-32 inner-product scores that the retrieved keys reach (within 1e-5).

The reference resets a row's whole faiss index as soon as an add would take it over
capacity (``cap_num_entries=True``), so it is filled to N - reps*512 and its timed adds
take it to exactly N before the search. One more add is then made in both
implementations, and the number of pairs still held after it is reported (``held after``).

The machine's measured matmul throughput gives a lower bound for an exact search:
``2 * rows * queries * N * dim`` FLOPs at the fp32 (or bf16) matmul rate.

Run (CPU, both implementations; builds benchmarks/.reference-venv on first use):

    .venv/bin/python benchmarks/bench_memory.py                 # 2K,16K,65K,262K,1M (reference up to 262K)
    .venv/bin/python benchmarks/bench_memory.py --quick         # smoke run: 2K,16K, 2 reps
    .venv/bin/python benchmarks/bench_memory.py --sizes 16K,65K --reps 7 --ref-max-size 1M
    .venv/bin/python benchmarks/bench_memory.py --device cuda --dtype bfloat16 --impl ours

Results: a markdown table on stdout and JSON in benchmarks/results/memory.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SCRIPT = Path(__file__).resolve()
DEFAULT_SIZES = "2K,16K,65K,262K,1M"
QUICK_SIZES = "2K,16K"
BLOCK = 512  # the data stream is generated in blocks of this many positions


# ------------------------------------------------------------------------ data
class ClusteredStream:
    """A deterministic stream of (key, value) pairs per row, addressable by position.

    Keys are L2-normalised samples of a mixture of ``clusters`` Gaussians around random
    unit centres (per-dimension spread ``spread``); values are standard normal. Block
    ``i`` (positions ``i*512 .. i*512+511``) comes from its own seeded generator, so any
    range can be regenerated without the rest, and both processes see the same data.
    """

    def __init__(self, seed: int, rows: int, dim: int, *, clusters: int = 256, spread: float = 0.1) -> None:
        import numpy as np

        self.np = np
        self.seed, self.rows, self.dim, self.spread = seed, rows, dim, spread
        centres = np.random.default_rng([seed, 0]).standard_normal((clusters, dim))
        self.centres = (centres / np.linalg.norm(centres, axis=-1, keepdims=True)).astype(np.float32)

    def _keys(self, rng: Any, shape: tuple[int, ...]) -> Any:
        np = self.np
        ids = rng.integers(0, len(self.centres), shape)
        keys = self.centres[ids] + self.spread * rng.standard_normal((*shape, self.dim), dtype=np.float32)
        return keys / np.linalg.norm(keys, axis=-1, keepdims=True)

    def block(self, index: int) -> Any:
        """``(rows, 512, 2, dim)`` float32 pairs at positions ``index*512 ...``."""
        np = self.np
        rng = np.random.default_rng([self.seed, 1, index])
        keys = self._keys(rng, (self.rows, BLOCK))
        values = rng.standard_normal((self.rows, BLOCK, self.dim), dtype=np.float32)
        return np.stack((keys, values), axis=2)

    def pairs(self, start: int, count: int) -> Any:
        """``(rows, count, 2, dim)`` pairs at positions ``start .. start+count-1`` (multiples of 512)."""
        assert start % BLOCK == 0 and count % BLOCK == 0, (start, count)
        first = start // BLOCK
        return self.np.concatenate([self.block(i) for i in range(first, first + count // BLOCK)], axis=1)

    def queries(self, count: int) -> Any:
        """``(rows, count, dim)`` queries from the same mixture."""
        return self._keys(self.np.random.default_rng([self.seed, 2]), (self.rows, count)).astype(self.np.float32)


# ---------------------------------------------------------------------- worker
def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("task") == "matmul":
        n = 8192 if spec["device"].startswith("cuda") else 2048  # big enough to approach the peak
        return {"n": n, **{name: common.matmul_tflops(spec["device"], name, n=n) for name in ("float32", "bfloat16")}}
    import numpy as np
    import torch

    import memorizing_transformers_pytorch as package

    impl, N, rows, dim = spec["impl"], spec["size"], spec["rows"], spec["dim"]
    device = spec["device"] if impl == "ours" else "cpu"
    dtype = getattr(torch, spec["dtype"]) if impl == "ours" else torch.float32
    topk, add_n, reps = spec["topk"], spec["add_n"], spec["reps"]
    impl_path = common.check_impl(impl, package)
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    if impl == "ours":
        memory = package.KNNMemory(dim=dim, max_memories=N, num_indices=rows, index=spec["index"])
        timed_adds = reps
        fill = N  # full: every timed add evicts the oldest pairs
    else:
        # The reference resets an index that would go over capacity: fill below N so the
        # timed adds end exactly at N. A fixed file name in the (temporary) working dir.
        memory = package.KNNMemory(dim=dim, max_memories=N, num_indices=rows,
                                   memmap_filename="knn.memory.memmap",
                                   multiprocessing=spec["ref_multiprocessing"])
        timed_adds = min(reps, N // add_n)
        fill = N - timed_adds * add_n

    stream = ClusteredStream(spec["seed"], rows, dim)

    def to_torch(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(device=device, dtype=dtype)

    position = 0
    while position < fill:
        count = min(spec["fill_chunk"], fill - position)
        memory.add(to_torch(stream.pairs(position, count)))
        position += count
    common.sync(device)
    common.log(f"  [{impl} N={N:,}] filled {fill:,} pairs per row")

    chunks = [to_torch(stream.pairs(position + i * add_n, add_n)) for i in range(timed_adds)]
    position += timed_adds * add_n
    pending = iter(chunks)
    add_times = common.time_calls(lambda: memory.add(next(pending)), reps=timed_adds, warmup=0, device=device)

    queries = to_torch(stream.queries(spec["queries"]))
    result: dict[str, Any] = {}

    def search() -> None:
        result.clear()  # drop the previous output first, so peak memory holds one result only
        result["kv"], result["mask"] = memory.search(queries, topk)

    search_times = common.time_calls(search, reps=reps, warmup=1, device=device)
    find_times = None
    if impl == "ours":  # the top-k search alone, without gathering the (rows, queries, k, 2, dim) pairs it returns
        q4 = queries.view(rows, 1, -1, dim)
        find_times = common.time_calls(lambda: memory.backend.search(memory.keys, memory.count, int(memory.count.max()), q4, topk),
                                       reps=reps, warmup=1, device=device)
    peak_rss = common.peak_rss_mb()
    peak_gpu = common.peak_device_mb(device)
    kv, mask = result["kv"], result["mask"]
    assert tuple(kv.shape) == (rows, spec["queries"], topk, 2, dim), tuple(kv.shape)
    assert tuple(mask.shape) == (rows, spec["queries"], topk), tuple(mask.shape)

    # One more add beyond capacity: ours evicts, the reference resets the index.
    extra = to_torch(stream.pairs(position, add_n))
    extra_ms = common.time_calls(lambda: memory.add(extra), reps=1, warmup=0, device=device)[0]
    held_after = int(memory.count[0]) if impl == "ours" else int(memory.knns[0].index.ntotal)

    common.log(f"  [{impl} N={N:,}] computing exact top-{topk} for recall")
    recall = recall_at_k(stream, kv, mask, queries, held=(position - N, position), topk=topk,
                         num_queries=spec["recall_queries"], device=device, dtype=dtype)
    return {
        "impl": impl, "index": spec["index"] if impl == "ours" else "hnsw", "size": N, "device": device, "dtype": str(dtype).removeprefix("torch."),
        "add": common.summarize(add_times), "search": common.summarize(search_times),
        "add_ms": common.summarize(add_times)["median_ms"],
        "search_ms": common.summarize(search_times)["median_ms"],
        "find_ms": common.summarize(find_times)["median_ms"] if find_times else None,
        "recall": recall, "peak_rss_mb": peak_rss, "peak_gpu_mb": peak_gpu,
        "extra_add_ms": extra_ms, "held_after_extra_add": held_after, "timed_adds": timed_adds,
        "package_path": impl_path,
    }


def recall_at_k(stream: ClusteredStream, kv: Any, mask: Any, queries: Any, *, held: tuple[int, int], topk: int,
                num_queries: int, device: str, dtype: Any) -> float:
    """Mean fraction of the exact top-k scores reached by the retrieved keys.

    The exact top-k is brute force over the keys the memory should hold (positions
    ``held``), in float32, from the keys rounded to the storage dtype, 16,384 keys at a time.
    """
    import torch

    q = queries[:, :num_queries].float()
    best = None
    start, stop = held
    for block_start in range(start, stop, 16384):
        count = min(16384, stop - block_start)
        keys = torch.from_numpy(stream.pairs(block_start, count)[:, :, 0]).to(device=device, dtype=dtype).float()
        scores = torch.einsum("bqd,bnd->bqn", q, keys)
        if best is not None:
            scores = torch.cat((best, scores), dim=-1)
        best = scores.topk(min(topk, scores.shape[-1]), dim=-1).values
    assert best is not None
    threshold = best[..., -1:]  # the k-th best exact score of each query
    retrieved = kv[:, :num_queries, :, 0].to(device).float()
    got = torch.einsum("bqd,bqkd->bqk", q, retrieved)
    got = got.masked_fill(~mask[:, :num_queries].to(device), float("-inf"))
    hits = (got >= threshold - 1e-5).sum(-1).clamp(max=topk)
    return float(hits.float().mean() / topk)


# ---------------------------------------------------------------------- driver
def parse_size(text: str) -> int:
    """``2048``, ``2K``, ``64K``/``65K`` (65,536), ``256K``/``262K``, ``1M`` (1,048,576)."""
    text = text.strip().upper()
    if text.endswith("K"):
        return round(float(text[:-1]) * 1000 / 1024) * 1024
    if text.endswith("M"):
        return round(float(text[:-1]) * 1e6 / 2**20) * 2**20
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--sizes", help=f"memory sizes per row (default {DEFAULT_SIZES}; --quick: {QUICK_SIZES})")
    parser.add_argument("--ref-max-size", default="262K",
                        help="largest size the reference runs at (its fill is slow); default 262K")
    parser.add_argument("--reps", type=int, help="timed reps per operation (default 5; --quick: 2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                        help="storage dtype of OUR memory (the reference is always float32)")
    parser.add_argument("--index", default="exact,flat",
                        help="our KNNMemory index kinds to run, comma-separated: exact (torch), flat (faiss's exact "
                             "kernels, CPU); default exact,flat")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--queries", type=int, default=4096)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--topk", type=int, default=32)
    parser.add_argument("--add-n", type=int, default=512, help="pairs per row in each timed add")
    parser.add_argument("--fill-chunk", type=int, default=16384, help="pairs per row in each add while filling")
    parser.add_argument("--recall-queries", type=int, help="queries checked against brute force (default 512)")
    parser.add_argument("--ref-multiprocessing", action="store_true",
                        help="the reference KNNMemory's own default (joblib, one process per core); "
                             "off by default, as in the reference model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json-name", help="file name under --out (default memory.json, or memory-DEVICE-DTYPE.json)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    common.check_device(args.device)
    sizes = [parse_size(s) for s in (args.sizes or (QUICK_SIZES if args.quick else DEFAULT_SIZES)).split(",")]
    for size in sizes:
        if size % args.add_n or size % BLOCK:
            sys.exit(f"--sizes: {size} is not a multiple of --add-n {args.add_n} and {BLOCK}")
    if args.fill_chunk % BLOCK or args.add_n % BLOCK:
        sys.exit(f"--fill-chunk and --add-n must be multiples of {BLOCK}")
    reps = args.reps or (2 if args.quick else 5)
    recall_queries = min(args.queries, args.recall_queries or (256 if args.quick else 512))
    ref_max = parse_size(args.ref_max_size)
    impls = common.selected_impls(args)
    pythons = common.interpreters(impls)
    indexes = [name.strip() for name in args.index.split(",") if name.strip()]
    if not indexes or any(name not in ("exact", "flat") for name in indexes):
        sys.exit(f"--index: expected a comma-separated list of exact, flat; got {args.index!r}")
    cases = [(impl, index) for impl in impls for index in (indexes if impl == "ours" else ["hnsw"])]

    common.log(f"measuring {args.device} matmul throughput")
    peak = common.run_worker(SCRIPT, {"task": "matmul", "impl": "ours", "device": args.device}, sys.executable,
                             timeout=600, omp_wait_policy=args.omp_wait_policy)
    if "error" in peak:
        sys.exit(f"matmul measurement failed: {peak['error']}")
    rate = peak["float32"] if args.dtype == "float32" else peak["bfloat16"]

    rows: list[dict[str, Any]] = []
    for index, size in enumerate(sizes):
        flops = 2 * args.rows * args.queries * size * args.dim
        for impl, kind in common.alternate(cases, index):
            if impl == "reference" and size > ref_max:
                common.log(f"[reference N={size:,}] skipped (> --ref-max-size {ref_max:,})")
                rows.append({"impl": impl, "index": kind, "size": size, "skipped": f"size > --ref-max-size {ref_max}"})
                continue
            spec = {
                "impl": impl, "index": kind, "size": size, "reps": reps, "rows": args.rows, "dim": args.dim,
                "queries": args.queries, "topk": args.topk, "add_n": args.add_n, "fill_chunk": args.fill_chunk,
                "recall_queries": recall_queries, "device": args.device, "dtype": args.dtype, "seed": args.seed,
                "ref_multiprocessing": args.ref_multiprocessing,
            }
            common.log(f"[{impl} {kind} N={size:,}] running")
            row = common.run_worker(SCRIPT, spec, pythons[impl], timeout=args.timeout,
                                    omp_wait_policy=args.omp_wait_policy)
            row.setdefault("impl", impl)
            row.setdefault("index", kind)
            row.setdefault("size", size)
            row["search_bound_ms"] = flops / (rate * 1e12) * 1e3
            row["search_flops"] = flops
            if "error" in row:
                common.log(f"[{impl} N={size:,}] FAILED: {row['error']}")
            rows.append(row)

    payload = {
        "benchmark": "knn_memory",
        "environment": common.environment(args.device),
        "settings": {
            "sizes": sizes, "indexes": indexes, "reps": reps, "rows": args.rows, "queries": args.queries, "dim": args.dim,
            "topk": args.topk, "add_n": args.add_n, "fill_chunk": args.fill_chunk, "dtype": args.dtype,
            "recall_queries": recall_queries, "ref_multiprocessing": args.ref_multiprocessing, "seed": args.seed,
            "omp_wait_policy": args.omp_wait_policy,
            "data": "mixture of 256 Gaussians (unit centres, spread 0.1 per dim), keys L2-normalised",
        },
        "matmul_tflops": peak,
        "results": rows,
    }
    print(report(payload))
    name = args.json_name or ("memory.json" if (args.device, args.dtype) == ("cpu", "float32")
                              else f"memory-{args.device.replace(':', '')}-{args.dtype}.json")
    path = common.write_json(args.out / name, payload)
    print(f"\nJSON: {path}")
    return payload


def report(payload: dict[str, Any]) -> str:
    peak = payload["matmul_tflops"]
    settings = payload["settings"]
    env = payload["environment"]
    lines = [
        (f"## KNNMemory: {settings['rows']} rows x {settings['queries']} queries, dim {settings['dim']}, "
         f"top-{settings['topk']}, add {settings['add_n']} pairs/row ({env['device']}, {env.get('gpu', env['cpu'])})"),
        "",
        (f"matmul {peak['n']}^3: float32 {peak['float32'] * 1e3:.1f} GFLOP/s, "
         f"bfloat16 {peak['bfloat16'] * 1e3:.1f} GFLOP/s; `bound` = search FLOPs / {settings['dtype']} matmul rate."),
        "",
    ]
    table = []
    for row in payload["results"]:
        table.append({
            **row,
            "memory": row.get("peak_gpu_mb") if row.get("peak_gpu_mb") is not None else row.get("peak_rss_mb"),
            "status": row.get("error", row.get("skipped", "ok")).splitlines()[0][:60],
        })
    memory_header = "peak GPU MiB" if any(r.get("peak_gpu_mb") is not None for r in table) else "peak RSS MiB"
    lines.append(common.markdown_table(table, [
        ("impl", "impl"), ("index", "index"), ("size", "N per row"), ("add_ms", "add ms"), ("search_ms", "search ms"),
        ("find_ms", "top-k only ms"), ("search_bound_ms", "bound ms"), ("recall", "recall@k"), ("memory", memory_header),
        ("held_after_extra_add", "held after"), ("status", "status"),
    ]))
    by_key = {(r.get("index", "exact") if r["impl"] == "ours" else "reference", r["size"]): r
              for r in payload["results"] if "error" not in r and "skipped" not in r}
    sizes = settings["sizes"]
    side = []
    for size in sizes:
        for kind in settings.get("indexes", ["exact"]):
            ours, ref = by_key.get((kind, size)), by_key.get(("reference", size))
            if not (ours and ref):
                continue
            side.append({
                "size": size, "index": kind,
                "add_o": ours["add_ms"], "add_r": ref["add_ms"], "add_x": ref["add_ms"] / ours["add_ms"],
                "s_o": ours["search_ms"], "s_r": ref["search_ms"], "s_x": ref["search_ms"] / ours["search_ms"],
                "rec_o": ours["recall"], "rec_r": ref["recall"],
                "rss_o": ours["peak_rss_mb"], "rss_r": ref["peak_rss_mb"],
            })
    if side:
        lines += ["", "Side by side (ratio = reference time / our time; > 1 means ours is faster):", ""]
        lines.append(common.markdown_table(side, [
            ("size", "N"), ("index", "our index"), ("add_o", "add ours"), ("add_r", "add ref"), ("add_x", "add ratio"),
            ("s_o", "search ours"), ("s_r", "search ref"), ("s_x", "search ratio"),
            ("rec_o", "recall ours"), ("rec_r", "recall ref"), ("rss_o", "RSS ours"), ("rss_r", "RSS ref"),
        ]))
    return "\n".join(lines)


if __name__ == "__main__":
    if not common.worker_entry(run_worker):
        main()
