"""GPU benchmark of OUR implementation: kNN memory search and model steps, fp32 and bf16.

One call of a few minutes runs, on CUDA, with our package only (no reference needed):

1. ``bench_memory.py`` (add / search / recall@32 / peak GPU memory) at 2K..1M pairs per row,
   with the memory stored in float32, then in bfloat16;
2. ``bench_model.py`` (train and inference steps, batch 2 x 512 tokens) with
   max_knn_memories 16K / 65K / 262K and without kNN memory, in float32, then with
   bf16 autocast.

Each case runs in its own process (see common.py). Without CUDA it prints why and exits
with status 0 without measuring anything (``--device cpu`` runs the same cases on CPU, as a
smoke test of the script itself).

Run:

    .venv/bin/python benchmarks/bench_gpu.py                    # writes into benchmarks/results
    .venv/bin/python benchmarks/bench_gpu.py --out /some/dir    # e.g. $OUT on the GPU machine
    .venv/bin/python benchmarks/bench_gpu.py --device cpu --quick   # smoke test without a GPU

Results: the tables on stdout; JSON per part (memory-cuda-float32.json, memory-cuda-bfloat16.json,
model-cuda-none.json, model-cuda-bf16.json) and a summary gpu.json in --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_memory
import bench_model
import common

MEMORY_SIZES = "2K,16K,65K,262K,1M"
MODEL_SIZES = "16384,65536,262144"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_RESULTS_DIR, help="directory for the JSON results")
    parser.add_argument("--device", default="cuda", help="default cuda; cpu only to smoke-test this script")
    parser.add_argument("--quick", action="store_true", help="small sizes and few steps")
    parser.add_argument("--memory-sizes", default=MEMORY_SIZES, help=f"default {MEMORY_SIZES}")
    parser.add_argument("--model-sizes", default=MODEL_SIZES, help=f"default {MODEL_SIZES}")
    parser.add_argument("--reps", type=int, default=10, help="timed reps per memory operation")
    parser.add_argument("--steps", type=int, default=20, help="timed model steps per mode")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    args = parser.parse_args(argv)

    if args.device.startswith("cuda") and not common.cuda_available():
        import torch

        print(f"bench_gpu: CUDA is not available (torch {torch.__version__}, "
              f"built with CUDA {torch.version.cuda}); nothing was measured.", file=sys.stderr)
        return 0

    start = time.perf_counter()
    device_name = args.device.replace(":", "")
    shared = ["--impl", "ours", "--device", args.device, "--out", str(args.out)]
    summary: dict[str, Any] = {"benchmark": "gpu", "environment": common.environment(args.device), "parts": {}}
    if not args.skip_memory:
        for dtype in ("float32", "bfloat16"):
            name = f"memory-{device_name}-{dtype}.json"
            argv_memory = shared + ["--dtype", dtype, "--json-name", name]
            argv_memory += ["--quick"] if args.quick else ["--sizes", args.memory_sizes, "--reps", str(args.reps)]
            print(f"\n### memory, {dtype}\n", flush=True)
            summary["parts"][name] = bench_memory.main(argv_memory)
    if not args.skip_model:
        for amp in ("none", "bf16"):
            name = f"model-{device_name}-{amp}.json"
            argv_model = shared + ["--amp", amp, "--json-name", name]
            argv_model += ["--quick"] if args.quick else ["--sizes", args.model_sizes, "--steps", str(args.steps)]
            print(f"\n### model, amp {amp}\n", flush=True)
            summary["parts"][name] = bench_model.main(argv_model)

    summary["wall_s"] = time.perf_counter() - start
    print("\n" + overview(summary))
    path = common.write_json(args.out / "gpu.json", summary)
    print(f"\nJSON: {path} (wall {summary['wall_s']:.0f} s)")
    return 0


def overview(summary: dict[str, Any]) -> str:
    """One compact table per part: search ms and recall by dtype; tokens/s by amp."""
    lines = [f"## Overview ({summary['environment'].get('gpu', summary['environment']['device'])})"]
    memory = [p for name, p in summary["parts"].items() if name.startswith("memory")]
    if memory:
        rows: dict[int, dict[str, Any]] = {}
        for part in memory:
            dtype = part["settings"]["dtype"]
            for r in part["results"]:
                row = rows.setdefault(r["size"], {"size": r["size"]})
                row[f"search_{dtype}"] = r.get("search_ms")
                row[f"add_{dtype}"] = r.get("add_ms")
                row[f"recall_{dtype}"] = r.get("recall")
                row[f"bound_{dtype}"] = r.get("search_bound_ms")
        lines += ["", "kNN memory (ms per call; bound = FLOPs / measured matmul rate of that dtype):", ""]
        lines.append(common.markdown_table(list(rows.values()), [
            ("size", "N per row"), ("add_float32", "add fp32"), ("search_float32", "search fp32"),
            ("bound_float32", "bound fp32"), ("recall_float32", "recall fp32"), ("add_bfloat16", "add bf16"),
            ("search_bfloat16", "search bf16"), ("bound_bfloat16", "bound bf16"), ("recall_bfloat16", "recall bf16"),
        ]))
    model = [p for name, p in summary["parts"].items() if name.startswith("model")]
    if model:
        rows2: dict[tuple[str, str], dict[str, Any]] = {}
        for part in model:
            amp = part["settings"]["amp"]
            for c in part["comparison"]:
                row = rows2.setdefault((c["config"], c["mode"]), {"config": c["config"], "mode": c["mode"]})
                row[f"tps_{amp}"] = c.get("ours_tokens_per_s")
                row[f"overhead_{amp}"] = c.get("ours_overhead")
        lines += ["", "Model steps (tokens/s; overhead = step time / no-knn step time):", ""]
        lines.append(common.markdown_table(list(rows2.values()), [
            ("config", "config"), ("mode", "mode"), ("tps_none", "tok/s fp32"), ("overhead_none", "overhead fp32"),
            ("tps_bf16", "tok/s bf16 autocast"), ("overhead_bf16", "overhead bf16"),
        ]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
