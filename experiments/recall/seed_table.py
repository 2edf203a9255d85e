"""The recall result across seeds: ``python experiments/recall/seed_table.py OUT`` (what ``seeds.sh`` runs last).

Reads ``OUT/seed*/recall.json`` (variant ``shift3``) and ``OUT/baselines/recall.json``; writes
``OUT/seeds.json`` (per seed: recall by distance at 16K memory and with the memory off; mean, spread and
the seeds at >= 0.95 at each distance), ``OUT/seeds.png``, and a markdown table on stdout.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANT = "shift3"


def main(out: Path) -> None:
    from experiments.recall import plot_recall

    runs = sorted(out.glob("seed*/recall.json"), key=lambda p: int(p.parent.name.removeprefix("seed")))
    if not runs:
        raise SystemExit(f"no {out}/seed*/recall.json: run experiments/recall/seeds.sh first")
    seeds = {int(p.parent.name.removeprefix("seed")): json.loads(p.read_text()) for p in runs}
    first = next(iter(seeds.values()))
    context = first["context"]
    distances = [int(d) for d in first["variants"][VARIANT]["by_distance"]]
    table = {}
    for seed, saved in seeds.items():
        result = saved["variants"][VARIANT]
        table[seed] = {"memory_16k": {str(d): result["by_distance"][str(d)]["accuracy"] for d in distances},
                       "memory_off": {str(d): result["memory_off"][str(d)] for d in distances},
                       "train_seconds": result["train_seconds"] + result.get("warmup_seconds", 0.0)}
    summary = {}
    for d in distances:
        values = [row["memory_16k"][str(d)] for row in table.values()]
        summary[str(d)] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                           "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                           "seeds_at_least_0.95": sum(v >= 0.95 for v in values), "seeds": len(values)}
    baselines_path = out / "baselines" / "recall.json"
    baselines = json.loads(baselines_path.read_text())["variants"] if baselines_path.exists() else {}
    result = {"variant": VARIANT, "description": first["variants"][VARIANT]["description"], "context": context,
              "data": first["data"], "warmup_steps": first["warmup_steps"], "steps": first["steps"],
              "documents_per_distance": first["variants"][VARIANT]["documents_per_distance"],
              "by_seed": table, "summary": summary,
              "baselines": {name: {str(d): r["by_distance"][str(d)]["accuracy"] for d in distances if str(d) in r["by_distance"]}
                            for name, r in baselines.items()}}
    (out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    curves = {f"seed {seed}, memory 16K": saved["variants"][VARIANT] for seed, saved in seeds.items()}
    curves.update({f"{name}: {r['description']}": r for name, r in baselines.items()})
    plot_recall(curves, str(out / "seeds.png"), context=context, title="Recall across seeds (token_shift=3 recipe)")

    header = " | ".join(f"{d} ({d / context:.1f}x)" for d in distances)
    print(f"| exact-match recall | {header} |")
    print("|---|" + "---|" * len(distances))
    for seed, row in table.items():
        print(f"| seed {seed}, memory 16K | " + " | ".join(f"{row['memory_16k'][str(d)]:.3f}" for d in distances) + " |")
    for seed, row in table.items():
        print(f"| seed {seed}, memory off | " + " | ".join(f"{row['memory_off'][str(d)]:.3f}" for d in distances) + " |")
    print("| mean (min-max) | " + " | ".join(f"{s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f})" for s in summary.values()) + " |")
    print("| seeds >= 0.95 | " + " | ".join(f"{s['seeds_at_least_0.95']} of {s['seeds']}" for s in summary.values()) + " |")
    for name, curve in result["baselines"].items():
        print(f"| {name} (seed 0) | " + " | ".join(f"{curve.get(str(d), float('nan')):.3f}" for d in distances) + " |")
    print(f"wrote {out / 'seeds.json'} and {out / 'seeds.png'}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]))
