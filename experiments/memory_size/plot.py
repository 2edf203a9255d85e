"""Loss against kNN memory size: our evaluations beside the paper's trend.

    python experiments/memory_size/plot.py NAME=EVAL_JSON [NAME=EVAL_JSON ...] --output OUT.png

Each ``EVAL_JSON`` is what ``memorizing-transformers eval`` writes (``by_memory_size``, and ``baseline`` under
``bits_per_byte`` when it had a baseline). The figure has two panels: ours (held-out bits per byte against the
memory size, the memory-off value at the left, the XL-only baseline dashed), and the paper's (token perplexity on
arXiv Math against the memory size, ``PAPER`` below). A table of both, relative to each run's no-memory value,
goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Wu et al. (ICLR 2022), arXiv Math, token perplexity, 500K steps of a 12-layer model. Read from third-party notes
# that quote the paper (the paper itself was not reachable offline): Table 4 for context 512 with a 512-token XL
# cache (no memory = Transformer-XL), Table 5 for context 2048 with a 2048 XL cache (131K and 262K: fine-tuned
# 20K steps at that size from the 65K model).
PAPER = {
    "context 512, XL 512 (Table 4; off: Transformer-XL)": {0: 2.67, 8192: 2.37, 65536: 2.31},
    "context 2048, XL 2048 (Tables 4-5; off: Transformer-XL)": {0: 2.42, 8192: 2.33, 65536: 2.26, 131072: 2.23, 262144: 2.21},
}


def load(spec: str) -> tuple[str, dict]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise SystemExit(f"expected NAME=EVAL_JSON, got {spec!r}")
    saved = json.loads(Path(path).read_text())
    if "by_memory_size" not in saved:
        raise SystemExit(f"{path}: no by_memory_size (not written by `memorizing-transformers eval`)")
    return name, saved


def relative_table(curves: dict[str, dict[int, float]]) -> list[str]:
    """Markdown rows: each size's value and its change from the curve's no-memory value (size 0)."""
    sizes = sorted({s for curve in curves.values() for s in curve})
    lines = ["| run | " + " | ".join("off" if s == 0 else f"{s // 1024}K" for s in sizes) + " |",
             "|---|" + "---|" * len(sizes)]
    for name, curve in curves.items():
        off = curve.get(0)
        cells = []
        for s in sizes:
            if s not in curve:
                cells.append("")
            elif s == 0 or off is None:
                cells.append(f"{curve[s]:.3f}")
            else:
                cells.append(f"{curve[s]:.3f} ({100 * (curve[s] / off - 1):+.1f}%)")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="NAME=EVAL_JSON")
    parser.add_argument("--output", required=True, help="the figure (.png)")
    args = parser.parse_args(argv)
    runs = dict(load(spec) for spec in args.runs)
    ours = {name: {int(s): v for s, v in saved["by_memory_size"].items()} for name, saved in runs.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for panel, curves, ylabel, title in ((left, ours, "held-out bits per byte", "this repository: Python stdlib, bytes"),
                                         (right, PAPER, "token perplexity", "the paper: arXiv Math, tokens")):
        sizes = sorted({s for curve in curves.values() for s in curve if s})
        off_x = sizes[0] / 4  # the no-memory value, drawn left of the smallest memory
        for name, curve in curves.items():
            xs = [off_x if s == 0 else s for s in sorted(curve)]
            (line,) = panel.plot(xs, [curve[s] for s in sorted(curve)], marker="o", label=name)
            baseline = runs.get(name, {}).get("bits_per_byte", {}).get("baseline") if curves is ours else None
            if baseline is not None:
                panel.axhline(baseline, color=line.get_color(), linestyle="--", linewidth=1,
                              label=f"{name}: XL-only baseline")
        panel.set_xscale("log", base=2)
        ticks = [off_x, *sizes]
        panel.set_xticks(ticks, ["off"] + [f"{s // 1024}K" for s in sizes])
        panel.set_xlabel("kNN memory size (tokens per document stream)")
        panel.set_ylabel(ylabel)
        panel.set_title(title)
        panel.grid(alpha=0.3)
        panel.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    for line in relative_table({**ours, **{f"paper, {k}": v for k, v in PAPER.items()}}):
        print(line)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main(sys.argv[1:])
