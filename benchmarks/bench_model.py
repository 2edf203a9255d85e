"""Model step benchmark: ours against the reference package 0.4.1, same architecture and arguments.

The model: num_tokens=256, dim=256, depth=4, heads=4, dim_head=64, a kNN memory in layer 3
(``memorizing_layers=(3,)``, top-32 retrieval), a 512-token Transformer-XL cache in layers
3 and 4, batch 2 and 512-token segments. Configurations:

* ``knn16K``, ``knn65K``: ``max_knn_memories`` 16,384 / 65,536 pairs per row,
* ``no-knn``: the same model with ``memorizing_layers=()`` (both packages accept the empty
  tuple; their ``create_knn_memories`` then returns an empty list, which is passed in).

Each (implementation, configuration) runs in its own process, implementations alternating:

1. two untimed training steps (the XL caches fill, the kNN memory is allocated),
2. per mode, ``train`` (forward + backward + AdamW step) then ``infer`` (``torch.no_grad``,
   eval mode, logits): clear the kNN memory and fill it directly with random normalised
   keys through its ``add``, run ``--warmup`` untimed steps, then time ``--steps`` steps.
   Every step writes 512 pairs per row (the tokens leaving the XL window) to the memory.

Ours is filled to capacity, so every step searches a full memory and evicts the oldest
pairs. The reference resets a whole faiss index when an add would take it over capacity
(after which it holds only 512 pairs), so it is filled to N - 512 * (warmup + steps) and
its memory grows to exactly N during the timed steps, never resetting.

Tokens in 1..255 (the reference's default ``pad_id=0`` would drop token 0 from the loss).

Run (CPU, both implementations; builds benchmarks/.reference-venv on first use):

    .venv/bin/python benchmarks/bench_model.py              # knn16K, knn65K, no-knn; 10 steps
    .venv/bin/python benchmarks/bench_model.py --quick      # smoke run: knn16K, no-knn; 2 steps
    .venv/bin/python benchmarks/bench_model.py --device cuda --impl ours --amp bf16

Results: a markdown table on stdout and JSON in benchmarks/results/model.json.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common

SCRIPT = Path(__file__).resolve()
MODEL_ARGS: dict[str, Any] = {
    "num_tokens": 256, "dim": 256, "depth": 4, "heads": 4, "dim_head": 64, "num_retrieved_memories": 32,
    "xl_max_memories": 512, "xl_memory_layers": (3, 4),
}
BATCH, SEQ_LEN = 2, 512
NO_KNN = "no-knn"


def config_name(size: int | None) -> str:
    return NO_KNN if size is None else f"knn{size // 1024}K"


# ---------------------------------------------------------------------- worker
class ModelSteps:
    """Timed steps of a model (ours or the reference: the same call) on random segments of tokens 1..255, its XL
    caches carried from step to step; ``prefill`` fills its kNN memories with random unit keys. Shared by
    ``bench_kernels.py``."""

    def __init__(self, model: Any, knn: Any, optimizer: Any, *, device: str, bf16: bool, seed: int) -> None:
        import numpy as np

        self.model, self.knn, self.optimizer, self.device, self.bf16 = model, knn, optimizer, device, bf16
        self.rng = np.random.default_rng(seed)
        self.xl: Any = None
        self.loss: Any = None

    def _amp(self) -> Any:
        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16)

    def _segment(self) -> tuple[Any, Any]:
        import torch

        tokens = torch.from_numpy(self.rng.integers(1, 256, (BATCH, SEQ_LEN + 1))).to(self.device)
        return tokens[:, :-1], tokens[:, 1:]

    def train(self) -> None:
        """Forward with labels, backward, AdamW."""
        x, y = self._segment()
        with self._amp():
            loss, self.xl = self.model(x, knn_memories=self.knn, xl_memories=self.xl, labels=y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss = loss.detach()

    def infer(self) -> None:
        """A no-grad forward."""
        import torch

        x, _ = self._segment()
        with torch.no_grad(), self._amp():
            _logits, self.xl = self.model(x, knn_memories=self.knn, xl_memories=self.xl)

    def prefill(self, target: int) -> None:
        """Clear each kNN memory, then add ``target`` random normalised pairs per row."""
        import torch
        import torch.nn.functional as F

        generator = torch.Generator(device=self.device).manual_seed(1)
        for memory in self.knn:
            memory.clear()
            for done in range(0, target, 16384):
                count = min(16384, target - done)
                pairs = torch.randn(BATCH, count, 2, MODEL_ARGS["dim_head"], device=self.device, generator=generator)
                pairs[:, :, 0] = F.normalize(pairs[:, :, 0], dim=-1)
                memory.add(pairs)
        common.sync(self.device)


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    import memorizing_transformers_pytorch as package

    impl, size = spec["impl"], spec["knn_size"]
    device = spec["device"] if impl == "ours" else "cpu"
    impl_path = common.check_impl(impl, package)
    torch.manual_seed(0)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)

    kwargs = {**MODEL_ARGS, "memorizing_layers": (3,) if size else (), "max_knn_memories": size or 16384}
    if impl == "ours" and spec.get("knn_index", "exact") != "exact":
        kwargs["knn_index"] = spec["knn_index"]
    model = package.MemorizingTransformer(**kwargs).to(device)
    knn = model.create_knn_memories(batch_size=BATCH)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    steps = ModelSteps(model, knn, optimizer, device=device, bf16=spec["amp"] == "bf16", seed=spec["seed"])
    train_step, infer_step, prefill = steps.train, steps.infer, steps.prefill

    model.train()
    for _ in range(2):
        train_step()
    added_per_phase = SEQ_LEN * (spec["warmup"] + spec["steps"])
    if size is None:
        target = 0
    elif impl == "ours":
        target = size
    else:
        target = max(0, size - added_per_phase)

    result: dict[str, Any] = {
        "impl": impl, "config": config_name(size), "knn_size": size, "device": device, "amp": spec["amp"],
        "parameters": sum(p.numel() for p in model.parameters()), "package_path": impl_path,
        "prefill": target, "modes": {},
    }
    for mode in spec["modes"]:
        step = train_step if mode == "train" else infer_step
        model.train(mode == "train")
        prefill(target)
        common.log(f"  [{impl} {config_name(size)}] {mode}: memory filled with {target:,} pairs per row")
        times = common.time_calls(step, reps=spec["steps"], warmup=spec["warmup"], device=device)
        summary = common.summarize(times)
        summary["tokens_per_s"] = BATCH * SEQ_LEN / (summary["median_ms"] / 1e3)
        result["modes"][mode] = summary
    loss = float(steps.loss) if steps.loss is not None else None
    if loss is not None and not math.isfinite(loss):
        raise RuntimeError(f"non-finite loss {loss}")
    result.update(final_loss=loss, peak_rss_mb=common.peak_rss_mb(), peak_gpu_mb=common.peak_device_mb(device))
    return result


# ---------------------------------------------------------------------- driver
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common.common_arguments(parser)
    parser.add_argument("--sizes", help="max_knn_memories values, comma-separated (default 16384,65536; "
                                        "--quick: 16384); the no-knn model always runs too")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default 10; --quick: 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps per mode after the fill (default 2; --quick: 1)")
    parser.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    parser.add_argument("--amp", default="none", choices=("none", "bf16"), help="bf16 autocast for OUR model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--knn-index", default="auto", choices=("auto", "exact", "flat", "ivf"),
                        help="OUR memory's search: auto (the default: faiss's exact kernels on CPU), exact (torch), flat, or ivf")
    parser.add_argument("--json-name", help="file name under --out (default model.json, or model-DEVICE-AMP.json)")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    common.check_device(args.device)
    sizes: list[int | None] = [int(s) for s in (args.sizes or ("16384" if args.quick else "16384,65536")).split(",")]
    configs = sizes + [None]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= {"train", "infer"} or not modes:
        sys.exit("--modes: choose from train, infer")
    steps = args.steps or (2 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    impls = common.selected_impls(args)
    if args.amp != "none" and "reference" in impls:
        common.log("note: --amp applies to our model only; the reference runs in float32")
    pythons = common.interpreters(impls)

    rows: list[dict[str, Any]] = []
    for index, size in enumerate(configs):
        for impl in common.alternate(impls, index):
            spec = {"impl": impl, "knn_size": size, "device": args.device, "amp": args.amp if impl == "ours" else "none",
                    "steps": steps, "warmup": warmup, "modes": modes, "seed": args.seed, "knn_index": args.knn_index}
            common.log(f"[{impl} {config_name(size)}] running")
            row = common.run_worker(SCRIPT, spec, pythons[impl], timeout=args.timeout,
                                    omp_wait_policy=args.omp_wait_policy)
            row.setdefault("impl", impl)
            row.setdefault("config", config_name(size))
            row.setdefault("knn_size", size)
            if "error" in row:
                common.log(f"[{impl} {config_name(size)}] FAILED: {row['error']}")
            rows.append(row)

    payload = {
        "benchmark": "model_step",
        "environment": common.environment(args.device),
        "settings": {"model": {**MODEL_ARGS, "memorizing_layers": [3]}, "batch": BATCH, "seq_len": SEQ_LEN,
                     "knn_sizes": sizes, "steps": steps, "warmup": warmup, "modes": modes, "amp": args.amp,
                     "seed": args.seed, "knn_index": args.knn_index, "omp_wait_policy": args.omp_wait_policy},
        "results": rows,
        "comparison": compare(rows, modes, impls),
    }
    print(report(payload))
    suffix = "" if (args.device, args.amp) == ("cpu", "none") else f"-{args.device.replace(':', '')}-{args.amp}"
    path = common.write_json(args.out / (args.json_name or f"model{suffix}.json"), payload)
    print(f"\nJSON: {path}")
    return payload


def compare(rows: list[dict[str, Any]], modes: list[str], impls: list[str]) -> list[dict[str, Any]]:
    """Per (config, mode): tokens/s of each implementation, ours/reference, and overhead vs no-knn."""
    ok = {(r["impl"], r["config"]): r for r in rows if "error" not in r}
    configs = list(dict.fromkeys(r["config"] for r in rows))
    out = []
    for config in configs:
        for mode in modes:
            entry: dict[str, Any] = {"config": config, "mode": mode}
            for impl in impls:
                run, base = ok.get((impl, config)), ok.get((impl, NO_KNN))
                if not run or mode not in run["modes"]:
                    continue
                entry[f"{impl}_ms"] = run["modes"][mode]["median_ms"]
                entry[f"{impl}_tokens_per_s"] = run["modes"][mode]["tokens_per_s"]
                if base and mode in base["modes"]:
                    entry[f"{impl}_overhead"] = run["modes"][mode]["median_ms"] / base["modes"][mode]["median_ms"]
            if "ours_tokens_per_s" in entry and "reference_tokens_per_s" in entry:
                entry["ours_over_reference"] = entry["ours_tokens_per_s"] / entry["reference_tokens_per_s"]
            out.append(entry)
    return out


def report(payload: dict[str, Any]) -> str:
    env, settings = payload["environment"], payload["settings"]
    lines = [
        (f"## Model step: batch {settings['batch']} x {settings['seq_len']} tokens, dim 256, depth 4, "
         f"knn layer 3, XL 512 in layers 3,4 ({env['device']}, {env.get('gpu', env['cpu'])}, amp {settings['amp']})"),
        "",
    ]
    table = []
    for row in payload["results"]:
        for mode in settings["modes"]:
            stats = row.get("modes", {}).get(mode, {})
            memory = row.get("peak_gpu_mb") if row.get("peak_gpu_mb") is not None else row.get("peak_rss_mb")
            table.append({"impl": row["impl"], "config": row["config"], "mode": mode, "memory": memory,
                          "ms": stats.get("median_ms"), "tps": stats.get("tokens_per_s"),
                          "status": row.get("error", "ok").splitlines()[0][:60]})
    memory_header = "peak GPU MiB" if any(r.get("peak_gpu_mb") is not None for r in payload["results"]) \
        else "peak RSS MiB"
    lines.append(common.markdown_table(table, [
        ("impl", "impl"), ("config", "config"), ("mode", "mode"), ("ms", "ms/step (median)"),
        ("tps", "tokens/s"), ("memory", memory_header), ("status", "status"),
    ]))
    lines += ["", ("Comparison (ours/ref = our tokens/s / reference tokens/s; "
                   "overhead = step time / same implementation's no-knn step time):"), ""]
    columns = [("config", "config"), ("mode", "mode"), ("ours_tokens_per_s", "ours tok/s"),
               ("reference_tokens_per_s", "ref tok/s"), ("ours_over_reference", "ours/ref"),
               ("ours_overhead", "overhead ours"), ("reference_overhead", "overhead ref")]
    present = {key for entry in payload["comparison"] for key in entry}
    lines.append(common.markdown_table(payload["comparison"], [c for c in columns if c[0] in present]))
    return "\n".join(lines)


if __name__ == "__main__":
    if not common.worker_entry(run_worker):
        main()
