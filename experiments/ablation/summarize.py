"""Summarises the ablation (``run.sh``): per setting and seed, held-out bits per byte with memory on, off, and
the baseline (same architecture trained with memory off); the gain of memory on over off and over the
baseline; mean and spread over seeds. Writes ``ablation.json`` and ``ablation.png`` to the output folder.

    python experiments/ablation/summarize.py runs/ablation [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

SETTINGS = {  # name -> (memorizing layer, token shift, copy warm-up steps), as in run.sh
    "paper": ("2 of 2", 0, 0),
    "first": ("1 of 2", 0, 0),
    "shift": ("2 of 2", 3, 0),
    "warmup": ("2 of 2", 0, 400),
    "all": ("1 of 2", 3, 400),
    "no-first": ("2 of 2", 3, 400),
    "no-shift": ("1 of 2", 0, 400),
    "no-warmup": ("1 of 2", 3, 0),
}


def gain(better: float, worse: float) -> float:
    return 100.0 * (worse - better) / worse


def collect(folder: Path) -> dict:
    runs = {}
    for setting in SETTINGS:
        for path in sorted(folder.glob(f"{setting}_seed*/eval.json")):
            seed = int(path.parent.name.rsplit("seed", 1)[1])
            bpb = json.loads(path.read_text())["bits_per_byte"]
            runs.setdefault(setting, {})[seed] = {
                "with_memory": bpb["with_memory"], "without_memory": bpb["without_memory"],
                "baseline": bpb["baseline"], "gain_vs_off_percent": gain(bpb["with_memory"], bpb["without_memory"]),
                "gain_vs_baseline_percent": gain(bpb["with_memory"], bpb["baseline"])}
    summary = {}
    for setting, seeds in runs.items():
        layer, shift, warmup = SETTINGS[setting]
        row = {"memorizing_layer": layer, "token_shift": shift, "copy_warmup_steps": warmup, "seeds": sorted(seeds)}
        for key in ("with_memory", "without_memory", "baseline", "gain_vs_off_percent", "gain_vs_baseline_percent"):
            values = [seeds[s][key] for s in sorted(seeds)]
            row[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None}
        summary[setting] = row
    return {"runs": {s: {str(k): v for k, v in seeds.items()} for s, seeds in runs.items()}, "summary": summary}


def table(result: dict) -> str:
    lines = ["| setting | layer | shift | warm-up | seeds | on | off | baseline | on vs off | on vs baseline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for setting, row in result["summary"].items():
        def cell(key: str, percent: bool = False) -> str:
            v = row[key]
            text = f"{v['mean']:+.1f}%" if percent else f"{v['mean']:.3f}"
            return text + (f" ({v['min']:+.1f} to {v['max']:+.1f})" if percent and v["std"] is not None else "")
        lines.append(f"| {setting} | {row['memorizing_layer']} | {row['token_shift']} | {row['copy_warmup_steps']} | "
                     f"{','.join(map(str, row['seeds']))} | {cell('with_memory')} | {cell('without_memory')} | "
                     f"{cell('baseline')} | {cell('gain_vs_off_percent', True)} | "
                     f"{cell('gain_vs_baseline_percent', True)} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(result["summary"])
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for offset, (key, label) in enumerate((("gain_vs_off_percent", "memory on vs off"),
                                           ("gain_vs_baseline_percent", "memory on vs XL-only baseline"))):
        xs = [i + (offset - 0.5) * 0.35 for i in range(len(settings))]
        ax.bar(xs, [result["summary"][s][key]["mean"] for s in settings], width=0.35, label=label, alpha=0.7)
        for x, s in zip(xs, settings):
            values = [run[key] for run in result["runs"][s].values()]
            ax.scatter([x] * len(values), values, color="black", s=10, zorder=3)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xticks(range(len(settings)), settings)
    ax.set_ylabel("held-out bits/byte gain (%)")
    ax.set_title("What the demo's memory gain depends on (dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the ablation's run folder (run.sh's OUT)")
    parser.add_argument("--out", type=Path, default=None, help="where ablation.json and .png go (default: folder)")
    args = parser.parse_args(argv)
    result = collect(args.folder)
    if not result["summary"]:
        raise SystemExit(f"no finished runs (SETTING_seedN/eval.json) in {args.folder}")
    result["command"] = "bash experiments/ablation/run.sh; python experiments/ablation/summarize.py runs/ablation"
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "ablation.png")
    print(table(result))
    print(f"wrote {out / 'ablation.json'} and {out / 'ablation.png'}")


if __name__ == "__main__":
    main()
