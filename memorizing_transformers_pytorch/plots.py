"""Figures of results (matplotlib, a ``train`` extra): evaluation by memory size. ``longbench/plot.py`` draws
the long-context heat-map."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import save_json

__all__ = ["plot_eval", "save_result", "set_visible_range"]


def plot_eval(result: dict[str, Any], path: str | Path) -> Path:
    """Bits per byte against memory size (log scale), with the baseline as a line (``evaluate.evaluate``'s result)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in result["by_memory_size"]]
    values = list(result["by_memory_size"].values())
    positions = list(range(len(sizes)))  # evenly spaced: sizes grow roughly geometrically
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, values, marker="o", label="memorizing model")
    shown = list(values)
    if "baseline" in result["bits_per_byte"]:
        shown.append(result["bits_per_byte"]["baseline"])
        ax.axhline(result["bits_per_byte"]["baseline"], color="gray", linestyle="--",
                   label=result.get("baseline_label", "second checkpoint (kNN memory off)"))
    set_visible_range(ax, shown)
    ax.set_xticks(positions)
    ax.set_xticklabels(["off" if s == 0 else f"{s // 1024}K" if s >= 1024 else str(s) for s in sizes])
    ax.set_xlabel("kNN memory size per stream (tokens)")
    ax.set_ylabel("bits per byte (held-out)")
    ax.set_title("Held-out bits per byte vs memory size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def set_visible_range(ax: Any, values: Sequence[float | None]) -> None:
    """A y-range at least 5% of the values' mean tall, so that a tiny difference does not look steep."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if finite:
        middle, spread = (max(finite) + min(finite)) / 2, max(max(finite) - min(finite), 0.05 * abs(float(np.mean(finite))))
        ax.set_ylim(middle - 0.6 * spread, middle + 0.6 * spread)


def save_result(result: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    """Writes ``eval.json`` and ``eval.png`` in ``output_dir``."""
    json_path = save_json(result, output_dir)
    return json_path, plot_eval(result, Path(output_dir) / "eval.png")
