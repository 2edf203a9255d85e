"""Soak test: does a long run keep its memory use and speed flat?

1. Inference: ``--segments`` segments (default 10,000) of one continuous stream per row (the standard library's
   files, concatenated without document starts, so the kNN memory fills and then stays full) through the model,
   memories carried.
2. Training: ``--steps`` (default 1,000) ``Trainer`` steps on the standard library, with a checkpoint every
   ``--checkpoint-every`` steps.

The process's resident memory (RSS) and the throughput are sampled every ``--every`` segments / steps. The
verdict compares RSS with its value after the warm-up (the first 20% of each phase: the kNN memory fills in the
first 8192 / 64 = 128 segments or steps at the defaults, and the allocator settles): flat means within +5%.

    .venv/bin/python benchmarks/soak.py --out benchmarks/results          # soak.json and soak.png
    .venv/bin/python benchmarks/soak.py --segments 200 --steps 50 --out /tmp/soak   # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memorizing_transformers_pytorch import MemorizingTransformer, get_config  # noqa: E402
from memorizing_transformers_pytorch.data import stdlib_documents  # noqa: E402
from memorizing_transformers_pytorch.train import TrainConfig, Trainer  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def summary(samples: list[dict], key: str) -> dict:
    """RSS growth after the warm-up and the spread of throughput, over the samples."""
    warm = max(1, len(samples) // 5)
    after = [s["rss_mb"] for s in samples[warm:]]
    rates = [s[key] for s in samples[warm:]]
    return {
        "rss_after_warmup_mb": samples[warm - 1]["rss_mb"], "rss_final_mb": samples[-1]["rss_mb"],
        "rss_max_mb": max(after), "rss_growth_percent": 100 * (samples[-1]["rss_mb"] / samples[warm - 1]["rss_mb"] - 1),
        "rss_max_growth_percent": 100 * (max(after) / samples[warm - 1]["rss_mb"] - 1),
        f"{key}_first_tenth": float(np.mean(rates[: max(1, len(rates) // 10)])),
        f"{key}_last_tenth": float(np.mean(rates[-max(1, len(rates) // 10) :])),
        f"{key}_min": min(rates), f"{key}_max": max(rates),
    }


@torch.no_grad()
def soak_inference(args: argparse.Namespace) -> list[dict]:
    torch.manual_seed(0)
    config = get_config(args.preset, max_knn_memories=args.memory)
    model = MemorizingTransformer(config).eval()
    text = np.concatenate(stdlib_documents("train")).astype(np.int64)
    n, B = args.seq_len, args.batch_size
    starts = [row * len(text) // B for row in range(B)]  # each row reads its own part of the text, wrapping around
    knn = model.create_knn_memories(batch_size=B)
    xl = None
    samples, window_start = [], time.perf_counter()
    for segment in range(1, args.segments + 1):
        offsets = [(start + (segment - 1) * n) % (len(text) - n) for start in starts]
        x = torch.from_numpy(np.stack([text[o : o + n] for o in offsets]))
        _, xl = model(x, knn_memories=knn, xl_memories=xl)
        if segment % args.every == 0:
            now = time.perf_counter()
            samples.append({"segment": segment, "rss_mb": rss_mb(), "segments_per_s": args.every / (now - window_start),
                            "memory_held": int(knn[0].count.min())})
            window_start = now
            if segment % (10 * args.every) == 0:
                print(f"inference {segment}/{args.segments}: RSS {samples[-1]['rss_mb']:.0f} MB, "
                      f"{samples[-1]['segments_per_s']:.1f} segments/s", flush=True)
    return samples


def soak_training(args: argparse.Namespace, run_dir: Path) -> list[dict]:
    config = TrainConfig(data="stdlib", run_dir=str(run_dir), seq_len=args.seq_len, batch_size=args.batch_size,
                         steps=args.steps, checkpoint_every=args.checkpoint_every, log_every=args.every)
    trainer = Trainer(get_config(args.preset, max_knn_memories=args.memory), config, progress=False)
    trainer.model.train()
    samples, window_start = [], time.perf_counter()
    while trainer.step_count < args.steps:
        loss = trainer.step()
        if trainer.step_count % args.checkpoint_every == 0:
            trainer.save()
        if trainer.step_count % args.every == 0:
            now = time.perf_counter()
            samples.append({"step": trainer.step_count, "rss_mb": rss_mb(), "loss": float(loss),
                            "steps_per_s": args.every / (now - window_start)})
            window_start = now
            if trainer.step_count % (10 * args.every) == 0:
                print(f"training {trainer.step_count}/{args.steps}: RSS {samples[-1]['rss_mb']:.0f} MB, "
                      f"{samples[-1]['steps_per_s']:.2f} steps/s, loss {samples[-1]['loss']:.3f}", flush=True)
    return samples


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 6))
    for column, (phase, x, rate) in enumerate((("inference", "segment", "segments_per_s"),
                                               ("training", "step", "steps_per_s"))):
        samples = result[phase]["samples"]
        axes[0, column].plot([s[x] for s in samples], [s["rss_mb"] for s in samples])
        axes[0, column].set_title(f"{phase}: resident memory (MB)")
        axes[1, column].plot([s[x] for s in samples], [s[rate] for s in samples])
        axes[1, column].set_title(f"{phase}: {rate.replace('_', ' ')}")
        axes[1, column].set_xlabel(x)
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", help="model config (configs.py)")
    parser.add_argument("--memory", type=int, default=8192, help="kNN memory size per stream")
    parser.add_argument("--segments", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--every", type=int, default=10, help="sample every N segments / steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    inference = soak_inference(args)
    with tempfile.TemporaryDirectory() as run_dir:
        training = soak_training(args, Path(run_dir))
    result = {
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "torch": torch.__version__, "seconds": time.perf_counter() - started,
        "inference": {"samples": inference, **summary(inference, "segments_per_s")},
        "training": {"samples": training, **summary(training, "steps_per_s")},
    }
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "soak.png")
    for phase in ("inference", "training"):
        r = result[phase]
        rate = "segments_per_s" if phase == "inference" else "steps_per_s"
        verdict = "flat" if r["rss_max_growth_percent"] <= 5 else "GROWING"
        print(f"{phase}: RSS {r['rss_after_warmup_mb']:.0f} MB after warm-up -> {r['rss_final_mb']:.0f} MB at the end "
              f"(max +{r['rss_max_growth_percent']:.1f}%: {verdict}); {rate} {r[f'{rate}_first_tenth']:.2f} in the "
              f"first tenth, {r[f'{rate}_last_tenth']:.2f} in the last")
    print(f"wrote {out / 'soak.json'} and {out / 'soak.png'} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
