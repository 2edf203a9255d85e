"""Memory's gain along one run: evaluates each checkpoint that the memory model and its baseline both saved
(``run.sh`` with ``CHECKPOINT_EVERY``) on the same held-out documents, then tabulates bits per byte with memory
on, off and by size, and the baseline, by step. Writes ``RUN/curve.json`` and ``RUN/curve.png``; each step's
evaluation stays in ``RUN/curve/step-N/eval.json`` and is not repeated.

    python experiments/token_level/curve.py runs/token_level/proofs_long_seed0 [--memory-sizes 0,4096,16384,65536]
        [--max-doc-bytes 0] [--split test] [--threads N] [--out docs/results/NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memorizing_transformers_pytorch.checkpoint import step_of


def gain(better: float, worse: float) -> float:
    return 100.0 * (worse - better) / worse


def shared_steps(run: Path) -> list[int]:
    """The steps at which both ``memory`` and ``baseline`` saved a checkpoint."""
    def steps(name: str) -> set[int]:
        return {step for path in (run / name / "checkpoints").glob("step-*") if (step := step_of(path)) is not None}
    return sorted(steps("memory") & steps("baseline"))


def evaluate(run: Path, step: int, args: argparse.Namespace) -> dict:
    out = run / "curve" / f"step-{step}"
    if not (out / "eval.json").is_file():
        from memorizing_transformers_pytorch.cli import main

        checkpoint = f"checkpoints/step-{step:07d}"
        main(["eval", "--checkpoint", str(run / "memory" / checkpoint),
              "--baseline-checkpoint", str(run / "baseline" / checkpoint), "--split", args.split,
              "--max-docs", str(args.max_docs), "--max-doc-bytes", str(args.max_doc_bytes),
              "--memory-sizes", args.memory_sizes, "--output", str(out),
              *(["--threads", str(args.threads)] if args.threads else [])])
    return json.loads((out / "eval.json").read_text())


def curve(run: Path, args: argparse.Namespace) -> dict:
    rows = []
    for step in shared_steps(run):
        result = evaluate(run, step, args)
        bpb = result["bits_per_byte"]
        rows.append({"step": step, "with_memory": bpb["with_memory"], "without_memory": bpb["without_memory"],
                     "baseline": bpb["baseline"], "by_memory_size": result["by_memory_size"],
                     "gain_vs_off_percent": gain(bpb["with_memory"], bpb["without_memory"]),
                     "gain_vs_baseline_percent": gain(bpb["with_memory"], bpb["baseline"]),
                     "best_gain_vs_baseline_percent": gain(min(result["by_memory_size"].values()), bpb["baseline"]),
                     "documents": result.get("documents"), "tokens": result.get("tokens")})
    return {"run": str(run), "split": args.split, "max_docs": args.max_docs, "max_doc_bytes": args.max_doc_bytes,
            "memory_sizes": args.memory_sizes, "steps": rows}


def table(result: dict) -> str:
    sizes = sorted({int(s) for row in result["steps"] for s in row["by_memory_size"]})
    lines = ["| step | baseline | " + " | ".join("off" if s == 0 else f"memory {s // 1024}K" for s in sizes)
             + " | on vs off | on vs baseline | best size vs baseline |",
             "|---|---|" + "---|" * len(sizes) + "---|---|---|"]
    for row in result["steps"]:
        cells = [f"{row['by_memory_size'].get(str(s), float('nan')):.3f}" for s in sizes]
        lines.append(f"| {row['step']} | {row['baseline']:.3f} | " + " | ".join(cells)
                     + f" | {row['gain_vs_off_percent']:+.1f}% | {row['gain_vs_baseline_percent']:+.1f}% | "
                     f"{row['best_gain_vs_baseline_percent']:+.1f}% |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in result["steps"]]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(steps, [row["baseline"] for row in result["steps"]], "k--", marker="s", label="XL-only baseline")
    sizes = sorted({int(s) for row in result["steps"] for s in row["by_memory_size"]})
    for size in sizes:
        label = "memory off (same weights)" if size == 0 else f"memory {size // 1024}K"
        ax.plot(steps, [row["by_memory_size"].get(str(size)) for row in result["steps"]], marker="o", label=label,
                linestyle=":" if size == 0 else "-")
    ax.set_xlabel("training step (2 x 512 tokens)")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(Path(result["run"]).name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run folder of run.sh (holding memory/ and baseline/)")
    parser.add_argument("--memory-sizes", default="0,4096,16384,65536")
    parser.add_argument("--max-docs", type=int, default=4)
    parser.add_argument("--max-doc-bytes", type=int, default=0, help="cut documents to this many tokens (0: none)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=None, help="where curve.json and curve.png go (default: RUN)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads for the evaluations")
    args = parser.parse_args(argv)
    if not shared_steps(args.run):
        raise SystemExit(f"no step at which both {args.run}/memory and {args.run}/baseline saved a checkpoint")
    result = curve(args.run, args)
    out = args.out or args.run
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "curve.png")
    print(table(result))
    print(f"wrote {out / 'curve.json'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()
