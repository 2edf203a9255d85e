"""Summarises the token-level runs (``run.sh``): per kind of document and seed, held-out bits per byte and token
perplexity with memory on, off and by memory size, and the XL-only baseline; the gains; the paper's Table 4
beside them. Writes ``token_level_documents.json`` and ``token_level_documents.png`` to the output folder.

    python experiments/token_level/summarize.py runs/token_level [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

KINDS = ("code", "proofs", "tex", "prose")
# Wu et al. 2022, Tables 4-5 (context 512): token perplexity of Transformer-XL, then with an 8K and a 65K memory,
# on the dataset of the same kind as ours (the paper has no technical prose; C4 and PG-19 are web text and books)
PAPER = {"code": ("GitHub", 2.26, 2.03, 1.87), "proofs": ("Isabelle", 2.46, 2.08, 2.06),
         "tex": ("arXiv Math", 2.67, 2.37, 2.31), "prose": None}


def gain(better: float, worse: float) -> float:
    return 100.0 * (worse - better) / worse


def collect(folder: Path) -> dict:
    runs: dict[str, dict[int, dict]] = {}
    for kind in KINDS:
        for path in sorted(folder.glob(f"{kind}_seed*/eval.json")):
            if not re.fullmatch(rf"{kind}_seed\d+", path.parent.name):  # e.g. code_seed0_64k, another evaluation
                continue
            seed = int(path.parent.name.rsplit("seed", 1)[1])
            result = json.loads(path.read_text())
            bpb, ppl = result["bits_per_byte"], result.get("perplexity", {})
            runs.setdefault(kind, {})[seed] = {
                "with_memory": bpb["with_memory"], "without_memory": bpb["without_memory"], "baseline": bpb["baseline"],
                "by_memory_size": result["by_memory_size"], "trained_memory_size": result.get("trained_memory_size"),
                "perplexity": ppl, "perplexity_by_memory_size": result.get("perplexity_by_memory_size", {}),
                "gain_vs_off_percent": gain(bpb["with_memory"], bpb["without_memory"]),
                "gain_vs_baseline_percent": gain(bpb["with_memory"], bpb["baseline"]),
                "best_gain_vs_baseline_percent": gain(min(result["by_memory_size"].values()), bpb["baseline"]),
                "documents": result.get("documents"), "tokens": result.get("tokens"), "bytes": result.get("bytes")}
    summary = {}
    for kind, seeds in runs.items():
        row: dict = {"seeds": sorted(seeds), "paper": PAPER[kind]}
        for key in ("with_memory", "without_memory", "baseline", "gain_vs_off_percent", "gain_vs_baseline_percent",
                    "best_gain_vs_baseline_percent"):
            values = [seeds[s][key] for s in sorted(seeds)]
            row[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                        "std": statistics.stdev(values) if len(values) > 1 else None}
        perplexities = [seeds[s]["perplexity_by_memory_size"] for s in sorted(seeds)]
        row["perplexity"] = {"baseline": statistics.fmean(seeds[s]["perplexity"]["baseline"] for s in seeds),
                             **{size: statistics.fmean(p[size] for p in perplexities)
                                for size in perplexities[0] if all(size in p for p in perplexities)}}
        sizes = sorted({int(size) for run in seeds.values() for size in run["by_memory_size"]})
        row["by_memory_size"] = {str(size): statistics.fmean(seeds[s]["by_memory_size"][str(size)] for s in seeds)
                                 for size in sizes if all(str(size) in seeds[s]["by_memory_size"] for s in seeds)}
        summary[kind] = row
    return {"runs": {k: {str(s): v for s, v in seeds.items()} for k, seeds in runs.items()}, "summary": summary}


def _size(size: int) -> str:
    return "off" if size == 0 else f"{size // 1024}K"


def table(result: dict) -> str:
    """Bits per byte by memory size (the paper's Table 4 in small), the gains, and the paper's perplexities."""
    sizes = sorted({int(s) for row in result["summary"].values() for s in row["by_memory_size"]})
    lines = ["| kind | seeds | XL baseline | " + " | ".join(f"memory {_size(s)}" for s in sizes)
             + " | on vs off | on vs baseline | perplexity: XL -> 4K -> 16K | paper (perplexity: XL -> 8K -> 65K) |",
             "|---|---|---|" + "---|" * len(sizes) + "---|---|---|---|"]
    for kind, row in result["summary"].items():
        def percent(key: str) -> str:
            v = row[key]
            return f"{v['mean']:+.1f}%" + (f" ({v['min']:+.1f} to {v['max']:+.1f})" if v["std"] is not None else "")
        cells = [f"{row['by_memory_size'][str(s)]:.3f}" if str(s) in row["by_memory_size"] else "-" for s in sizes]
        paper = row["paper"]
        paper_text = (f"{paper[0]}: {paper[1]} -> {paper[2]} -> {paper[3]} ({gain(paper[2], paper[1]):.0f}%, "
                      f"{gain(paper[3], paper[1]):.0f}%)" if paper else "-")
        ppl = row["perplexity"]
        ppl_text = (f"{ppl['baseline']:.1f} -> {ppl['4096']:.1f} -> {ppl['16384']:.1f} "
                    f"({gain(ppl['4096'], ppl['baseline']):.0f}%, {gain(ppl['16384'], ppl['baseline']):.0f}%)"
                    if "4096" in ppl and "16384" in ppl else "-")
        lines.append(f"| {kind} | {','.join(map(str, row['seeds']))} | {row['baseline']['mean']:.3f} | "
                     + " | ".join(cells) + f" | {percent('gain_vs_off_percent')} | "
                     f"{percent('gain_vs_baseline_percent')} | {ppl_text} | {paper_text} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(result["summary"])
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        row = result["summary"][kind]
        for seed, run in result["runs"][kind].items():
            sizes = sorted(int(s) for s in run["by_memory_size"] if int(s) > 0)
            ax.plot(sizes, [run["by_memory_size"][str(s)] for s in sizes], marker="o", label=f"memory (seed {seed})")
            ax.axhline(run["baseline"], color="gray", linestyle="--", linewidth=0.9)
            ax.axhline(run["without_memory"], color="gray", linestyle=":", linewidth=0.9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("memory size (tokens)")
        ax.set_title(f"{kind}: on vs baseline {row['gain_vs_baseline_percent']['mean']:+.1f}%", fontsize=9)
    axes[0][0].set_ylabel("held-out bits per byte\n(dashed: XL baseline, dotted: off)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the runs' folder (run.sh's OUT)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where token_level_documents.json and .png go (default: the folder)")
    args = parser.parse_args(argv)
    result = collect(args.folder)
    if not result["summary"]:
        raise SystemExit(f"no finished runs (KIND_seedN/eval.json) in {args.folder}")
    result["command"] = ("python3 scripts/fetch_documents.py runs/documents; bash experiments/token_level/run.sh; "
                         "python experiments/token_level/summarize.py runs/token_level")
    out = args.out or args.folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "token_level_documents.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "token_level_documents.png")
    print(table(result))
    print(f"wrote {out / 'token_level_documents.json'} and {out / 'token_level_documents.png'}")


if __name__ == "__main__":
    main()
