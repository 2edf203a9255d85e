"""Kernel benchmark (issue 32): eager against compiled layers, the dense mask (SDPA) against flex attention,
float32 against bf16 autocast, and this checkout against an older one, on bench_model.py's model (width 256,
4 layers, a kNN memory in layer 3, XL caches in layers 3-4, batch 2, 512-token segments).

Each variant runs in its own process: two untimed steps (the XL caches fill; a compiled variant compiles
here), the kNN memory filled to capacity with random unit keys, ``--warmup`` untimed steps, then ``--steps``
timed ones; ``train`` is forward + backward + AdamW, ``infer`` is a no-grad forward in eval mode. Variants
(``--variants``, comma-separated):

    before           eager, dense mask, from the checkout given by ``--before`` (a git worktree of an older commit)
    eager            eager, dense mask (SDPA)
    compiled         each layer torch.compiled (``compile_layers``), dense mask
    flex             eager layers, ``attention_kernel="flex"`` (flex attention itself is compiled)
    compiled-flex    both

On CPU, torch's compiled flex attention has no backward: the flex variant times ``infer`` only there, and
compiled-flex does not run (torch 2.13's inductor fails to compile flex attention inside a compiled CPU layer).

    .venv/bin/python benchmarks/bench_kernels.py                            # CPU: eager, compiled, flex, compiled-flex
    git worktree add /tmp/before 1642ac8 && .venv/bin/python benchmarks/bench_kernels.py --before /tmp/before
    python3 benchmarks/bench_kernels.py --device cuda --amp none,bf16 --sizes 0,16384,65536

Results: a markdown table on stdout and JSON in benchmarks/results/kernels.json (``--out``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from bench_model import BATCH, MODEL_ARGS, SEQ_LEN, ModelSteps

SCRIPT = Path(__file__).resolve()
VARIANTS = ("before", "eager", "compiled", "flex", "compiled-flex")


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import memorizing_transformers_pytorch as package

    device, variant, size = spec["device"], spec["variant"], spec["knn_size"]
    if variant == "compiled-flex" and device == "cpu":
        return {"error": "not on CPU: torch 2.13 cannot compile flex attention inside a compiled CPU layer"}
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    kwargs = {**MODEL_ARGS, "memorizing_layers": (3,) if size else (), "max_knn_memories": size or 16384}
    if "flex" in variant:
        kwargs["attention_kernel"] = "flex"
    model = package.MemorizingTransformer(**kwargs).to(device)
    if variant.startswith("compiled"):
        model.compile_layers()
    knn = model.create_knn_memories(batch_size=BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    steps = ModelSteps(model, knn, optimizer, device=device, bf16=spec["amp"] == "bf16", seed=0)

    result: dict[str, Any] = {"variant": variant, "knn_size": size, "amp": spec["amp"], "device": device,
                              "package_path": str(Path(package.__file__).resolve().parent.parent), "modes": {}}
    for mode in spec["modes"]:
        if mode == "train" and "flex" in variant and device == "cpu":
            result["modes"][mode] = {"skipped": "no flex attention backward on CPU"}
            continue
        step = steps.train if mode == "train" else steps.infer
        model.train(mode == "train")
        steps.xl = None
        started = time.perf_counter()
        for _ in range(2):  # the XL caches fill; compiled variants compile both shapes
            step()
        common.sync(device)
        first_steps = time.perf_counter() - started
        steps.prefill(size)
        times = common.time_calls(step, reps=spec["steps"], warmup=spec["warmup"], device=device)
        summary = common.summarize(times)
        summary["tokens_per_s"] = BATCH * SEQ_LEN / (summary["median_ms"] / 1e3)
        summary["first_two_steps_s"] = first_steps
        result["modes"][mode] = summary
    result["peak_rss_mb"] = common.peak_rss_mb()
    result["peak_gpu_mb"] = common.peak_device_mb(device)
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", default=None, help=f"comma-separated, from {', '.join(VARIANTS)} (default: "
                                                         "all; 'before' only with --before)")
    parser.add_argument("--before", type=Path, default=None, help="an older checkout for the 'before' variant")
    parser.add_argument("--sizes", default="16384", help="kNN memory sizes per row, comma-separated (0: no memory)")
    parser.add_argument("--amp", default="none", help="comma-separated: none, bf16")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1, help="run every variant this many times, alternating "
                                                                 "the order; report the median tokens/s")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: torch's)")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=common.DEFAULT_RESULTS_DIR)
    parser.add_argument("--json-name", default="kernels.json")
    args = parser.parse_args(argv)
    common.check_device(args.device)
    variants = (args.variants.split(",") if args.variants
                else [v for v in VARIANTS if v != "before" or args.before is not None])
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if "before" in variants and args.before is None:
        sys.exit("the 'before' variant needs --before CHECKOUT")
    runs = []  # every worker's result; with --repeats, the variants alternate and each row takes the median
    for repeat in range(args.repeats):
        for size in (int(s) for s in args.sizes.split(",")):
            for amp in args.amp.split(","):
                for variant in variants if repeat % 2 == 0 else variants[::-1]:
                    spec = {"impl": "ours", "variant": variant, "knn_size": size, "amp": amp, "device": args.device,
                            "modes": args.modes.split(","), "steps": args.steps, "warmup": args.warmup,
                            "threads": args.threads}
                    common.log(f"[{variant} knn={size} amp={amp}, repeat {repeat + 1}/{args.repeats}] running")
                    row = common.run_worker(SCRIPT, spec, sys.executable, timeout=args.timeout,
                                            checkout=args.before if variant == "before" else None)
                    row.update(variant=variant, knn_size=size, amp=amp, repeat=repeat)
                    if "error" in row:
                        common.log(f"  FAILED: {row['error'].splitlines()[0]}")
                    runs.append(row)
    rows = []
    for row in runs:
        if row["repeat"] > 0:
            continue
        same = [r for r in runs if (r["variant"], r["knn_size"], r["amp"]) == (row["variant"], row["knn_size"], row["amp"])]
        merged = dict(row)
        for mode, summary in row.get("modes", {}).items():
            speeds = [r["modes"][mode]["tokens_per_s"] for r in same if "tokens_per_s" in r.get("modes", {}).get(mode, {})]
            if speeds:
                median = statistics.median(speeds)
                merged["modes"] = {**merged["modes"], mode: {**summary, "tokens_per_s": median,
                                                             "median_ms": BATCH * SEQ_LEN / median * 1e3,
                                                             "tokens_per_s_each_repeat": speeds}}
        rows.append(merged)
    table = []
    for row in rows:
        base = next((r for r in rows if r["variant"] == "eager" and r["knn_size"] == row["knn_size"]
                     and r["amp"] == row["amp"]), None)
        for mode in args.modes.split(","):
            m = row.get("modes", {}).get(mode, {})
            b = (base or {}).get("modes", {}).get(mode, {})
            speed = m.get("tokens_per_s")
            table.append({"variant": row["variant"], "memory": row["knn_size"], "amp": row["amp"], "mode": mode,
                          "tokens_per_s": speed, "median_ms": m.get("median_ms"),
                          "vs_eager": speed / b["tokens_per_s"] if speed and b.get("tokens_per_s") else None,
                          "first_two_steps_s": m.get("first_two_steps_s"),
                          "note": m.get("skipped") or row.get("error", "")})
    print(common.markdown_table(table, [("variant", "variant"), ("memory", "memory"), ("amp", "amp"),
                                        ("mode", "mode"), ("tokens_per_s", "tokens/s"), ("median_ms", "ms/step"),
                                        ("vs_eager", "x eager"), ("first_two_steps_s", "first 2 steps (s)"),
                                        ("note", "note")]))
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    payload = {"benchmark": "kernels", "environment": common.environment(args.device), "args": settings,
               "rows": rows, "table": table, "runs": runs}
    path = common.write_json(args.out / args.json_name, payload)
    common.log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    if not common.worker_entry(run_worker):
        main()
