"""The heat-map of a run: for each task (rows) and setting (columns), the mean score by length and depth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .runner import SETTINGS, short_length

__all__ = ["plot_heatmap"]


def plot_heatmap(records: Sequence[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """Writes ``path`` (PNG): score 0 (red) to 1 (green) per (depth, length); grey where nothing ran."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in records if "score" in r]
    if not scored:
        raise ValueError("no scored samples to plot")
    tasks = list(dict.fromkeys(r["task"] for r in scored))
    settings = [s for s in SETTINGS if any(r["setting"] == s for r in scored)]
    lengths = sorted({r["length"] for r in scored})
    depths_of = {task: sorted({r["depth"] for r in scored if r["task"] == task}) for task in tasks}
    rows = max(len(d) for d in depths_of.values())
    fig, axes = plt.subplots(len(tasks), len(settings), squeeze=False,
                             figsize=(1.0 + 0.7 * len(lengths) * len(settings), 0.9 + (0.25 + 0.3 * rows) * len(tasks)))
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="#dddddd")
    for i, task in enumerate(tasks):
        depths = depths_of[task]
        for j, setting in enumerate(settings):
            grid = np.full((len(depths), len(lengths)), np.nan)
            for a, depth in enumerate(depths):
                for b, length in enumerate(lengths):
                    cell = [r["score"] for r in scored if (r["task"], r["setting"], r["depth"], r["length"])
                            == (task, setting, depth, length)]
                    if cell:
                        grid[a, b] = float(np.mean(cell))
            ax = axes[i, j]
            ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=0, vmax=1, aspect="auto")
            for (a, b), value in np.ndenumerate(grid):
                if not np.isnan(value):
                    ax.text(b, a, f"{value:.1f}", ha="center", va="center", fontsize=6)
            ax.set_xticks(range(len(lengths)), [short_length(n) for n in lengths], fontsize=6)
            ax.set_yticks(range(len(depths)), [f"{d:.2f}" for d in depths], fontsize=6)
            if i == 0:
                ax.set_title(setting, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{task}\ndepth", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
