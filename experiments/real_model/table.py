"""Markdown tables of the real-model results: ``python -m experiments.real_model.table`` prints the long-document
table (perplexity / bits per byte per document and setting) and the passkey table (exact match by length)."""

from __future__ import annotations

import json
from pathlib import Path

ROWS = [  # (label in the JSON, setting, what the row is)
    ("untrained", "window_512", "(a) plain, independent windows of 512"),
    ("untrained", "window_2048", "(a) plain, independent windows of 2,048"),
    ("untrained", "window_8192", "(a) plain, independent windows of 8,192 (its trained context)"),
    ("untrained", "memory_16384", "(b) 512-token segments + memory, untrained"),
    ("ft_memory", "memory_16384", "(c) ... memory parameters fine-tuned"),
    ("ft_all", "memory_16384", "(d) ... every weight fine-tuned with memory"),
    ("ft_all", "window_512", "(d) same weights, memory off, windows of 512"),
    ("ft_all", "window_2048", "(d) same weights, memory off, windows of 2,048"),
]


def longdoc_table(path: str = "docs/results/real_model_longdoc.json") -> str:
    data = json.loads(Path(path).read_text())
    names = list(data["documents"])
    header = "| | " + " | ".join(f"{n} ({data['documents'][n]['tokens']:,} tokens)" for n in names) + " |"
    lines = [header, "|---|" + "---|" * len(names)]
    for label, setting, what in ROWS:
        cells = []
        for name in names:
            result = data["results"].get(label, {}).get(name, {}).get(setting)
            cells.append("not run" if result is None else f"{result['perplexity']:.3f} / {result['bits_per_byte']:.4f}")
        if any(c != "not run" for c in cells):
            lines.append(f"| {what} | " + " | ".join(cells) + " |")
    gaps = []
    for name in names:
        untrained = data["results"].get("untrained", {}).get(name, {})
        if {"window_512", "window_2048"} <= set(untrained):
            shares = []
            for label in ("untrained", "ft_memory", "ft_all"):
                own = data["results"].get(label, {}).get(name, {})
                # the gap between the same weights' windows (ft_memory changed no pretrained weight)
                windows = own if {"window_512", "window_2048"} <= set(own) else untrained
                low, high = windows["window_512"]["perplexity"], windows["window_2048"]["perplexity"]
                result = own.get("memory_16384")
                if result is not None:
                    shares.append(f"{label} {100 * (low - result['perplexity']) / (low - high):.0f}%")
            gaps.append(f"{name}: " + ", ".join(shares))
    return "\n".join(lines) + "\n\nShare of the gap between the same weights' 512 and 2,048 windows that 512 + memory closes: " + "; ".join(gaps)


def sizes_table(path: str = "docs/results/real_model_longdoc.json", name: str = "code") -> str:
    data = json.loads(Path(path).read_text())
    lines = ["| memory | " + " | ".join(["4,096", "8,192", "16,384"]) + " |", "|---|---|---|---|"]
    for label, what in (("untrained", "first 4 pairs kept (the default)"), ("untrained_plain_fifo", "plain FIFO")):
        results = data["results"].get(label, {}).get(name, {})
        cells = [f"{results[f'memory_{s}']['perplexity']:.3f}" if f"memory_{s}" in results else "-"
                 for s in (4096, 8192, 16384)]
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def passkey_table(path: str = "docs/results/real_model_passkey.json") -> str:
    data = json.loads(Path(path).read_text())
    lines = []
    for label, settings in data["results"].items():
        lengths = sorted({int(length) for runs in settings.values() for length in runs})
        lines += [f"| {label} | " + " | ".join(f"{n:,}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for setting, runs in settings.items():
            cells = []
            for n in lengths:
                samples = list(runs.get(str(n), {}).values())
                if samples:
                    right = sum(s["correct"] for s in samples)
                    seconds = sum(s["seconds"] for s in samples) / len(samples)
                    cells.append(f"{right}/{len(samples)} ({seconds:.0f} s)")
                else:
                    cells.append("-")
            lines.append(f"| {setting} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(longdoc_table())
    print()
    print(sizes_table())
    print()
    if Path("docs/results/real_model_passkey.json").is_file():
        print(passkey_table())
