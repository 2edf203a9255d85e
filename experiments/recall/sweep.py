"""Long-range recall: does the model use what it read far outside its context?

Trains small byte-level models for the same budget on the recall task
(``experiments/recall/task.py``: key -> value bindings queried
later) and measures exact-match recall of the value, and bits per value byte, at
binding-to-query distances from inside the local window to many times the local +
XL context. Variants: the memorizing model (kNN memory), an XL-only model, a plain
model, and ablations (gate, memorizing layer, neighbours k, training memory size).

    python experiments/recall/sweep.py                      # the three main variants
    python experiments/recall/sweep.py --variants all       # + ablations
    python experiments/recall/sweep.py --variants memory,mlp_gate --steps 1000
    python -m experiments.recall.sweep ...                  # the same

Run from the repository root. Every variant first learns to copy (the copy warm-up,
``memorizing_transformers_pytorch/copy_warmup.py``: ``--warmup-steps`` of the normal training loop on the data source
``copy``, random strings copied 48-80 bytes later, loss on the copied bytes only, into
``OUT/VARIANT.warmup``), then trains ``--steps`` on the recall task from those weights
(``init_from``). Small models learn to copy there within a few thousand steps, abruptly;
on the recall task alone they did not start in 12,000 steps (see
experiments/recall/README.md). Both phases are the same for every variant, so the budget
is equal.

Each variant trains in its own process (``--jobs`` at a time, one thread each); each
phase is skipped when its run folder already holds a finished checkpoint, and resumed
from its latest checkpoint when it holds an unfinished one, so an interrupted
sweep continues where it stopped. Results: ``OUT/recall.json``,
``OUT/recall.png`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memorizing_transformers_pytorch.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]  # the repository root: ``experiments`` and the package import from it
sys.path.insert(0, str(ROOT))

SEQ_LEN = 128
XL = 128
DATA = "recall:query_rate=0.5"
BASE = dict(num_tokens=256, dim=128, depth=2, heads=4, dim_head=32, memorizing_layers=(2,), max_knn_memories=4096,
            num_retrieved_memories=32, xl_max_memories=XL, pad_id=0, clear_memories_on_sos_token_id=2, knn_gate="joint")
# name -> (model overrides, evaluation memory size, description)
VARIANTS = {
    "memory": ({}, 16384, "kNN memory (joint softmax), layer 2 of 2"),
    "xl_only": ({"memorizing_layers": ()}, 0, "XL cache only, no memorizing layer"),
    "plain": ({"memorizing_layers": (), "xl_max_memories": 0}, 0, "no XL, no memory (local window only)"),
    "sigmoid_gate": ({"knn_gate": "sigmoid"}, 16384, "per-head sigmoid gate"),
    "mlp_gate": ({"knn_gate": "mlp"}, 16384, "MLP gate over log-distance"),
    "depth_3": ({"depth": 3}, 16384, "3 layers, memorizing layer 2"),
    "layer_1": ({"memorizing_layers": (1,)}, 16384, "kNN memory in layer 1 of 2"),
    "k8": ({"num_retrieved_memories": 8}, 16384, "8 retrieved memories"),
    "k32": ({"num_retrieved_memories": 32}, 16384, "32 retrieved memories"),
    "k128": ({"num_retrieved_memories": 128}, 16384, "128 retrieved memories"),
    "prev_tokens": ({"previous_token_heads": 3}, 16384, "3 heads start as previous-token heads (1, 2, 3 back)"),
    "memory_bias": ({"memory_rel_pos_bias": True}, 16384, "memories get the farthest bucket's position bias"),
    "train_mem_512": ({"max_knn_memories": 512}, 16384, "trained with a 512-pair memory, evaluated with 16K"),
    "shift3": ({"memorizing_layers": (1,), "token_shift": 3}, 16384,
               "kNN memory in layer 1 of 2, keys see 3 tokens back, queries 2 (token_shift=3)"),
}
MAIN = ("memory", "xl_only", "plain")


def warmup_config(run_dir: Path, steps: int, seed: int) -> TrainConfig:
    """The copy warm-up of every variant: ``steps`` of the normal training loop on the ``copy`` source (8 rows
    of 128 random bytes holding a 48-byte string and its copy, loss on the copied bytes), AdamW at a constant
    lr 2e-3 after 100 warmup steps, weight decay 0.01, beta2 0.999: the old ``recall.copy_warmup`` (same loss
    curve)."""
    from memorizing_transformers_pytorch.train import TrainConfig

    return TrainConfig(data="copy", run_dir=str(run_dir), seq_len=SEQ_LEN, batch_size=8, steps=steps, lr=2e-3,
                       warmup_steps=100, min_lr_ratio=1.0, weight_decay=0.01, adam_beta2=0.999, seed=seed,
                       checkpoint_every=500, log_every=50)


def train_one(name: str, out: Path, steps: int, warmup_steps: int, seed: int, data: str, base: dict) -> None:
    """Trains one variant (run in a child process): ``warmup_steps`` of the copy warm-up (``warmup_config``),
    then ``steps`` on the recall task from those weights."""
    import torch

    from experiments.recall import RecallTask  # (and registers the 'recall' data source)
    from memorizing_transformers_pytorch import MemorizingTransformerConfig
    from memorizing_transformers_pytorch.checkpoint import latest_checkpoint
    from memorizing_transformers_pytorch.train import TrainConfig, train

    torch.set_num_threads(1)
    overrides, _, _ = VARIANTS[name]
    # the training memory holds a whole training document, unless the variant sets its size
    memory = max(base["max_knn_memories"], RecallTask.parse(data).length)
    model_config = MemorizingTransformerConfig(**{**base, "max_knn_memories": memory, **overrides})
    warmup_dir = out / f"{name}.warmup"
    if warmup_steps and not finished(warmup_dir, warmup_steps):
        train(model_config, warmup_config(warmup_dir, warmup_steps, seed),
              resume=latest_checkpoint(warmup_dir) is not None, progress=False)
    config = TrainConfig(data=data, run_dir=str(out / name), seq_len=SEQ_LEN, batch_size=8, steps=steps, lr=2e-3,
                         warmup_steps=100, checkpoint_every=500, log_every=50, seed=seed,
                         init_from=str(warmup_dir) if warmup_steps else "")
    train(model_config, config, resume=latest_checkpoint(out / name) is not None, progress=False)


def finished(run_dir: Path, steps: int) -> bool:
    from memorizing_transformers_pytorch.checkpoint import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    return latest is not None and json.loads((latest / "state.json").read_text())["step"] >= steps


def evaluate_one(name: str, out: Path, distances: list[int], documents: int, data: str) -> dict:
    import torch

    from experiments.recall import RecallTask, evaluate_recall
    from memorizing_transformers_pytorch.checkpoint import load_model

    torch.set_num_threads(2)
    model = load_model(out / name)
    _, memory_size, description = VARIANTS[name]
    task = RecallTask.parse(data)
    result = evaluate_recall(model, task, distances, documents=documents, memory_size=memory_size,
                             seq_len=SEQ_LEN, batch_size=16)
    if memory_size:  # the same weights with the memory off: what the memory itself adds
        off = evaluate_recall(model, task, distances, documents=documents, memory_size=0, seq_len=SEQ_LEN,
                              batch_size=16)
        result["memory_off"] = {d: r["accuracy"] for d, r in off["by_distance"].items()}
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    result.update(description=description, config=model.config.to_dict(), final_train_loss=metrics[-1]["loss"],
                  train_seconds=metrics[-1]["elapsed_s"], steps=metrics[-1]["step"])
    result.update(warmup_summary(out / f"{name}.warmup"))
    return result


def warmup_summary(warmup_dir: Path) -> dict:
    """``warmup_steps``, ``warmup_seconds`` and ``warmup_copy_bits_last_100`` (mean bits per copied byte of the
    last 100 steps) of a variant's copy warm-up, or nothing when it had none."""
    from memorizing_transformers_pytorch.checkpoint import latest_checkpoint

    latest = latest_checkpoint(warmup_dir)
    if latest is None:
        return {}
    state = json.loads((latest / "state.json").read_text())
    if "copy_bits" in state:  # a warm-up written by the old recall.copy_warmup: every step's bits, its seconds
        bits = state["copy_bits"]
        return dict(warmup_steps=state["step"], warmup_seconds=state["seconds"],
                    warmup_copy_bits_last_100=sum(bits[-100:]) / len(bits[-100:]))
    records = [json.loads(line) for line in (warmup_dir / "metrics.jsonl").read_text().splitlines()]
    # The metrics hold the mean of each window of log_every (50) steps, not every step's loss: the last-100
    # mean is the step-weighted mean of the last windows that cover 100 steps. That is exact when the windows
    # end on 100 steps (steps a multiple of 50), and otherwise covers up to 49 more steps (an approximation).
    # Records that a resumed run wrote again (steps after its checkpoint) supersede the earlier ones.
    kept: list[dict] = []
    for record in reversed(records):
        if not kept or record["step"] < kept[-1]["step"]:
            kept.append(record)
    covered, bits = 0, 0.0
    for record, before in zip(kept, [r["step"] for r in kept[1:]] + [0]):
        window = record["step"] - before
        covered, bits = covered + window, bits + window * record["bits_per_byte"]
        if covered >= 100:
            break
    # elapsed_s counts from the start of the run's last process: the training time when it was not resumed
    return dict(warmup_steps=state["step"], warmup_seconds=records[-1]["elapsed_s"],
                warmup_copy_bits_last_100=bits / covered)


def evaluation_ablations(out: Path, distances: list[int], documents: int, data: str) -> dict:
    """The trained ``memory`` variant evaluated with other memory sizes and numbers of neighbours k (same
    weights)."""
    import torch

    from experiments.recall import RecallTask, evaluate_recall
    from memorizing_transformers_pytorch.checkpoint import load_model

    torch.set_num_threads(2)
    trained = load_model(out / "memory")
    task = RecallTask.parse(data)
    results = {}
    for size in (0, 512, 2048):
        results[f"memory size {size}"] = evaluate_recall(trained, task, distances, documents=documents,
                                                         memory_size=size, seq_len=SEQ_LEN, batch_size=16)
    trained_k = trained.config.num_retrieved_memories
    for k in (1, 2, 8, 128):
        if k == trained_k:
            continue
        model = load_model(out / "memory", num_retrieved_memories=k, max_knn_memories=16384)
        results[f"k = {k} (trained with {trained_k})"] = evaluate_recall(model, task, distances, documents=documents,
                                                                         seq_len=SEQ_LEN, batch_size=16)
    return results


def wired_check(out: Path, distances: list[int], documents: int) -> dict:
    """The hand-wired lookup model (``experiments/recall/wired.py``): memory on vs off, 1- and 8-byte values."""
    import torch

    from experiments.recall import RecallTask, evaluate_recall, plot_recall, wired_lookup_model

    torch.set_num_threads(2)
    model = wired_lookup_model(xl=XL)
    curves = {}
    for value_len in (1, 8):
        task = RecallTask(value_len=value_len)
        usable = [d for d in distances if d >= task.bindings * task.width]
        for size in (16384, 0):
            label = f"{value_len}-byte values, memory {'16K' if size else 'off'}"
            curves[label] = evaluate_recall(model, task, usable, documents=documents, memory_size=size,
                                            seq_len=SEQ_LEN, batch_size=16)
    plot_recall(curves, str(out / "wired.png"), context=SEQ_LEN + XL, title="Hand-wired lookup model (nothing learned)")
    (out / "wired.json").write_text(json.dumps(curves, indent=2) + "\n")
    return curves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(MAIN), help=f"comma list, or 'all': {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=3000,
                        help="recall-task training steps per variant (batch 8 x 128 bytes)")
    parser.add_argument("--warmup-steps", type=int, default=6000,
                        help="steps of the copy warm-up (memorizing_transformers_pytorch/copy_warmup.py) before the recall task, per variant "
                             "(0 = none)")
    parser.add_argument("--distances", default="88,176,352,704,1408,2048,2816,5632", help="binding-to-query distances")
    parser.add_argument("--data", default=DATA,
                        help="recall task for training (and the value format at evaluation); e.g. "
                             "recall:query_rate=0.5,length=8192 for training queries up to 8 KiB back")
    parser.add_argument("--eval-docs", type=int, default=64, help="documents per distance (8 queries each)")
    parser.add_argument("--set", default="",
                        help="model-config fields for every variant (a variant's own settings win), e.g. "
                             "num_retrieved_memories=8")
    parser.add_argument("--jobs", type=int, default=2, help="variants trained at once (one thread each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "recall"))
    parser.add_argument("--eval-ablations", action="store_true",
                        help="also evaluate the memory variant with other memory sizes and k (no training)")
    parser.add_argument("--wired", action="store_true",
                        help="only evaluate the hand-wired lookup model (no training): does the memory path work?")
    parser.add_argument("--train-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    base = {**BASE, **parse_overrides(args.set, parser)}
    if args.train_one:
        train_one(args.train_one, out, args.steps, args.warmup_steps, args.seed, args.data, base)
        return
    if args.wired:
        out.mkdir(parents=True, exist_ok=True)
        distances = [int(d) for d in args.distances.split(",")]
        curves = wired_check(out, distances, args.eval_docs)
        print_table(curves, distances, SEQ_LEN + XL)
        return
    names = list(VARIANTS) if args.variants == "all" else [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    out.mkdir(parents=True, exist_ok=True)

    todo = [n for n in names if not finished(out / n, args.steps)]
    running: list[tuple[str, subprocess.Popen, float]] = []
    while todo or running:
        while todo and len(running) < args.jobs:
            name = todo.pop(0)
            log = open(out / f"{name}.log", "w")
            command = [sys.executable, __file__, "--train-one", name, "--steps", str(args.steps), "--out", str(out),
                       "--warmup-steps", str(args.warmup_steps), "--seed", str(args.seed), "--data", args.data,
                       "--set", args.set]
            running.append((name, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                   env={"OMP_NUM_THREADS": "1", **__import__("os").environ}),
                            time.perf_counter()))
            print(f"[recall] training {name} ({args.warmup_steps} copy warm-up + {args.steps} recall steps; log: "
                  f"{out / (name + '.log')}, metrics: {out / name}/metrics.jsonl)", flush=True)
        time.sleep(5)
        for entry in list(running):
            name, process, started = entry
            if process.poll() is not None:
                running.remove(entry)
                if process.returncode:
                    raise SystemExit(f"training {name} failed; see {out / f'{name}.log'}")
                print(f"[recall] {name} trained in {time.perf_counter() - started:.0f}s", flush=True)

    distances = [int(d) for d in args.distances.split(",")]
    results_path = out / "recall.json"
    results = json.loads(results_path.read_text())["variants"] if results_path.exists() else {}
    for name in names:
        print(f"[recall] evaluating {name}", flush=True)
        results[name] = evaluate_one(name, out, distances, args.eval_docs, args.data)
    context = SEQ_LEN + XL
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    evaluation = saved.get("evaluation_ablations", {})
    if args.eval_ablations and "memory" in results:
        print("[recall] evaluation ablations of the memory variant", flush=True)
        evaluation = evaluation_ablations(out, distances, args.eval_docs, args.data)
    results_path.write_text(json.dumps({"variants": results, "evaluation_ablations": evaluation, "seq_len": SEQ_LEN,
                                        "xl": XL, "context": context, "steps": args.steps, "data": args.data,
                                        "warmup_steps": args.warmup_steps, "base_model": base},
                                       indent=2) + "\n")

    from experiments.recall import plot_recall

    plot_recall({f"{n}: {r['description']}": r for n, r in results.items() if n in MAIN}, str(out / "recall.png"),
                context=context)
    ablations = {f"{n}": r for n, r in results.items() if n not in ("xl_only", "plain")}
    if len(ablations) > 1:
        plot_recall(ablations, str(out / "recall_ablations.png"), context=context, title="Recall ablations")
    if evaluation:
        plot_recall({"memory 16K, as trained": results["memory"], **evaluation}, str(out / "recall_eval_ablations.png"),
                    context=context, title="Same weights, other memory sizes and k")
    print_table(results, distances, context)
    if evaluation:
        print("\nmemory variant, other evaluation settings:")
        print_table({"memory (16K, as trained)": results["memory"], **evaluation}, distances, context)


def parse_overrides(text: str, parser: argparse.ArgumentParser) -> dict:
    """``"num_retrieved_memories=8,knn_gate=mlp"`` -> a dict of model-config fields (ints where they parse)."""
    overrides = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        if name not in BASE or not value:
            parser.error(f"--set: expected FIELD=VALUE with FIELD one of {', '.join(BASE)}, got {item!r}")
        overrides[name] = int(value) if value.lstrip("-").isdigit() else value
    return overrides


def print_table(results: dict, distances: list[int], context: int) -> None:
    header = "| variant | " + " | ".join(f"{d} ({d / context:.1f}x)" for d in distances) + " | value bits/byte @ max |"
    print(header)
    print("|" + "---|" * (len(distances) + 2))
    for name, result in results.items():
        cells = [f"{result['by_distance'][str(d)]['accuracy']:.3f}" if str(d) in result["by_distance"] else "-"
                 for d in distances]
        last = result["by_distance"].get(str(distances[-1]), {}).get("bits_per_value_byte", float("nan"))
        print(f"| {name} | " + " | ".join(cells) + f" | {last:.2f} |")
        if "memory_off" in result:
            off = [f"{result['memory_off'][str(d)]:.3f}" if str(d) in result["memory_off"] else "-" for d in distances]
            print(f"| {name}, same weights, memory off | " + " | ".join(off) + " | |")
    print(f"(exact-match recall of the values; distance in bytes, and in multiples of the local + XL context {context})")


if __name__ == "__main__":
    main()
