"""Perplexity against kNN memory size, one panel per document, with the plain model's windows as horizontal
lines: ``python -m experiments.real_model.plot [--json docs/results/real_model_longdoc.json] [--out ...png]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", default="docs/results/real_model_longdoc.json")
    parser.add_argument("--out", default="docs/results/real_model_longdoc.png")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(Path(args.json).read_text())
    documents = list(data["documents"])
    figure, axes = plt.subplots(1, len(documents), figsize=(5 * len(documents), 4), squeeze=False)
    for axis, name in zip(axes[0], documents):
        for label, results in data["results"].items():
            settings = results.get(name, {})
            sizes = sorted(int(s.split("_")[1]) for s in settings if s.startswith("memory_"))
            if sizes:
                axis.plot(sizes, [settings[f"memory_{s}"]["perplexity"] for s in sizes], "o-",
                          label=f"512 + memory ({label})")
            for setting, result in settings.items():
                if setting.startswith("window_"):
                    axis.axhline(result["perplexity"], linestyle="--" if label == "untrained" else ":", linewidth=1,
                                 color={"512": "tab:red", "2048": "tab:orange", "8192": "tab:green"}.get(
                                     setting.split("_")[1], "gray"),
                                 label=f"plain, windows of {setting.split('_')[1]} ({label})")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("kNN memory size (tokens per layer)")
        axis.set_ylabel("perplexity")
        axis.set_title(f"{name} ({data['documents'][name]['tokens']} tokens)")
        axis.legend(fontsize=7)
    figure.suptitle("SmolLM2-135M reading 512-token segments with a kNN memory")
    figure.tight_layout()
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
