"""The recall result across seeds: ``python experiments/recall/seed_table.py OUT`` (what ``seeds.sh`` runs last).

Reads each seed's first phase, ``OUT/seed*/recall.json`` (variant ``shift3``, written by ``sweep.py``), or, when
the seed has one, its second phase, ``OUT/seed*/final/shift3/recall.json`` (written by ``python -m experiments
recall``); the baselines likewise from ``OUT/baselines``. Writes ``OUT/seeds.json`` (per seed: recall by distance
at 16K memory and with the memory off; mean, spread and the seeds at >= 0.95 at each distance),
``OUT/seeds.png``, and a markdown table on stdout.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

VARIANT = "shift3"
MEMORY = 16384


def read_stage(folder: Path, variant: str) -> dict | None:
    """A variant's recall in ``folder`` (a seed's or the baselines'), from its last phase: ``sweep.py``'s entry
    (``by_distance``, ``memory_off``, ``description``, ``train_seconds``, ...) with the second phase's recall and
    time when there is one, and ``phases`` (the steps of each phase); None when the folder has no first phase."""
    first_path = folder / "recall.json"
    if not first_path.exists():
        return None
    first = json.loads(first_path.read_text())
    result = dict(first["variants"][variant], phases=[first["steps"]])
    final = folder / "final" / variant / "recall.json"
    if final.exists():
        curves = json.loads(final.read_text())
        on = curves.get(f"memory {MEMORY}", curves["memory off"])
        metrics = [json.loads(line) for line in (folder / f"{variant}_more" / "metrics.jsonl").read_text().splitlines()]
        result.update(by_distance=on["by_distance"], phases=[first["steps"], metrics[-1]["step"]],
                      train_seconds=result["train_seconds"] + metrics[-1]["elapsed_s"])
        if f"memory {MEMORY}" in curves:
            result["memory_off"] = {d: r["accuracy"] for d, r in curves["memory off"]["by_distance"].items()}
    return result


def main(out: Path) -> None:
    from experiments.recall import plot_recall

    runs = sorted(out.glob("seed*/recall.json"), key=lambda p: int(p.parent.name.removeprefix("seed")))
    if not runs:
        raise SystemExit(f"no {out}/seed*/recall.json: run experiments/recall/seeds.sh first")
    first = json.loads(runs[0].read_text())
    seeds = {int(p.parent.name.removeprefix("seed")): read_stage(p.parent, VARIANT) for p in runs}
    context = first["context"]
    distances = [int(d) for d in first["variants"][VARIANT]["by_distance"]]
    table = {}
    for seed, result in seeds.items():
        table[seed] = {"memory_16k": {str(d): result["by_distance"][str(d)]["accuracy"] for d in distances},
                       "memory_off": {str(d): result["memory_off"][str(d)] for d in distances},
                       "train_seconds": result["train_seconds"] + result.get("warmup_seconds", 0.0)}
    summary = {}
    for d in distances:
        values = [row["memory_16k"][str(d)] for row in table.values()]
        summary[str(d)] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                           "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                           "seeds_at_least_0.95": sum(v >= 0.95 for v in values), "seeds": len(values)}
    baselines = {name: read_stage(out / "baselines", name) for name in ("xl_only", "plain")}
    baselines = {name: r for name, r in baselines.items() if r is not None}
    phases = next(iter(seeds.values()))["phases"]
    if any(r["phases"] != phases for r in [*seeds.values(), *baselines.values()]):
        raise SystemExit(f"{out}: the seeds and baselines trained for different steps: "
                         f"{ {n: r['phases'] for n, r in [*seeds.items(), *baselines.items()]} }")
    result = {"variant": VARIANT, "description": first["variants"][VARIANT]["description"], "context": context,
              "data": first["data"], "warmup_steps": first["warmup_steps"], "steps": phases,
              "documents_per_distance": first["variants"][VARIANT]["documents_per_distance"],
              "by_seed": table, "summary": summary,
              "baselines": {name: {str(d): r["by_distance"][str(d)]["accuracy"] for d in distances if str(d) in r["by_distance"]}
                            for name, r in baselines.items()}}
    (out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    curves = {f"seed {seed}, memory 16K": r for seed, r in seeds.items()}
    curves.update({f"{name}: {r['description']}": r for name, r in baselines.items()})
    title = f"Recall across seeds (token_shift=3 recipe, steps {' + '.join(map(str, phases))})"
    plot_recall(curves, str(out / "seeds.png"), context=context, title=title)

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
