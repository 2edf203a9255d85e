"""``python -m experiments passkey``: passkey accuracy by length and depth, for one or more checkpoints."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memorizing_transformers_pytorch.checkpoint import load_checkpoint, load_model
from memorizing_transformers_pytorch.cli import HelpFormatter, parse_sizes

from .evaluate import evaluate_passkey, plot_passkey
from .task import PasskeyTask

__all__ = ["add_passkey_command"]


def _named(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    return (name, path) if sep else (Path(text).name, text)


def cmd_passkey(args: argparse.Namespace) -> None:
    lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    depths = [float(d) for d in args.depths.split(",") if d.strip()]
    sizes = parse_sizes(args.memory_sizes, "--memory-sizes")
    if not lengths or min(lengths) < 200:
        raise ValueError(f"--lengths: need lengths >= 200 bytes, got {args.lengths!r}")
    if not depths or any(not 0 <= d <= 1 for d in depths):
        raise ValueError(f"--depths: need depths in [0, 1], got {args.depths!r}")
    runs = [_named(text) for text in args.checkpoint]
    curves, train_length = {}, None
    for name, path in runs:
        checkpoint = load_checkpoint(path)  # fails here, before any evaluation, on a bad path
        train_config = checkpoint.get("train_config", {})
        data = train_config.get("data", "")
        if data.startswith("passkey"):
            train_length = max(train_length or 0, PasskeyTask.parse(data).max_length)
        seq_len = args.seq_len or train_config.get("seq_len", 128)
        model = load_model(checkpoint["path"], device=args.device)
        # a model trained with its memory off (--no-knn-memory) is an XL-only model: evaluated as trained
        memorizing = len(model.config.memorizing_layers) > 0 and train_config.get("knn_memory", True)
        for size in (sizes if memorizing else [0]):
            label = name if not memorizing else f"{name}, memory {'off' if size == 0 else size}"
            print(f"[passkey] {label}", flush=True)
            curves[label] = evaluate_passkey(model, lengths, depths, trials=args.trials, memory_size=size,
                                             seq_len=seq_len, device=args.device, seed=args.seed)
    print("| model | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for label, result in curves.items():
        print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in result["accuracy_by_length"].values()) + " |")
    print(f"(exact-match accuracy by document length in bytes, mean over depths {depths}, {args.trials} passkeys "
          f"per length and depth; chance 1e-5)")
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "passkey.json").write_text(json.dumps({"curves": curves, "lengths": lengths, "depths": depths,
                                                     "train_length": train_length,
                                                     "checkpoints": dict(runs)}, indent=2) + "\n")
    plot_passkey(curves, str(output / "passkey.png"), train_length=train_length)
    print(f"wrote {output / 'passkey.json'} and {output / 'passkey.png'}")


def add_passkey_command(sub: argparse._SubParsersAction) -> None:
    passkey = sub.add_parser("passkey", help="passkey retrieval accuracy by length and depth (train with --data passkey)",
                             formatter_class=HelpFormatter)
    passkey.add_argument("--checkpoint", action="append", required=True,
                         help="[NAME=]checkpoint or run folder; repeat to compare models")
    passkey.add_argument("--lengths", default="1024,2048,4096,8192,16384,32768,65536", help="document lengths (bytes)")
    passkey.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9", help="passkey depths (0 = start, 1 = end)")
    passkey.add_argument("--trials", type=int, default=4, help="passkeys per length and depth")
    passkey.add_argument("--memory-sizes", default="0,65536",
                         help="kNN memory sizes for models with a memory (0 = memory off)")
    passkey.add_argument("--seed", type=int, default=1234, help="seed of the evaluation documents")
    passkey.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    passkey.add_argument("--output", default="runs/passkey", help="folder for passkey.json and passkey.png")
    passkey.add_argument("--device", default="cpu", help="torch device")
    passkey.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    passkey.set_defaults(func=cmd_passkey)
