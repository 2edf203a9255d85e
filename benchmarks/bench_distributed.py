"""Training tokens/s: one process vs ``torchrun`` with several processes (gloo on CPU), same global batch.

    python benchmarks/bench_distributed.py                # 1 process x 2 threads vs 2 processes x 1 thread
    python benchmarks/bench_distributed.py --steps 60 --procs 2 --batch-size 2

Both runs train the demo model on the standard library with the same global batch
(``procs x batch_size`` rows), so they read the same data; tokens/s is the median of
the logged windows after the first (warm-up) one. Writes
``benchmarks/results/distributed.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(command: list[str], threads: int, run_dir: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stdout[-2000:] + done.stderr[-2000:])
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(m["tokens_per_s"] for m in metrics[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2, help="rows per process")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    args = parser.parse_args()
    common = ["--data", "stdlib", "--steps", str(args.steps), "--log-every", "10", "--checkpoint-every", "0",
              "--warmup-steps", "5"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(2):  # alternate, so that drift on a noisy machine hits both
            single_dir, multi_dir = Path(tmp) / f"single{repeat}", Path(tmp) / f"multi{repeat}"
            single = [sys.executable, "-m", "memorizing_transformers_pytorch", "train", "--run-dir", str(single_dir),
                      "--batch-size", str(args.procs * args.batch_size), "--threads", str(args.cores), *common]
            multi = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.procs}",
                     "-m", "memorizing_transformers_pytorch", "train", "--run-dir", str(multi_dir),
                     "--batch-size", str(args.batch_size), "--threads", str(max(1, args.cores // args.procs)), *common]
            results.setdefault("1 process", []).append(run(single, args.cores, single_dir))
            results.setdefault(f"{args.procs} processes", []).append(
                run(multi, max(1, args.cores // args.procs), multi_dir))
    summary = {name: statistics.median(values) for name, values in results.items()}
    ratio = summary[f"{args.procs} processes"] / summary["1 process"]
    print("| setting | tokens/s |")
    print("|---|---|")
    for name, value in summary.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"ratio {args.procs} processes / 1 process: {ratio:.2f} (global batch {args.procs * args.batch_size} x 512)")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"tokens_per_s": summary, "runs": results, "ratio": ratio,
                                          "args": vars(args)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
