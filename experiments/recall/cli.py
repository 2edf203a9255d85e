"""``python -m experiments recall``: exact-match recall by distance, from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memorizing_transformers_pytorch.checkpoint import load_checkpoint, load_model
from memorizing_transformers_pytorch.cli import HelpFormatter, parse_sizes

from .evaluate import evaluate_recall, plot_recall
from .task import RecallTask

__all__ = ["add_recall_command"]


def cmd_recall(args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(args.checkpoint)
    train_config = checkpoint.get("train_config", {})
    data = train_config.get("data", "recall")
    task = RecallTask.parse(data if data.startswith("recall") else "recall")
    distances = [int(d) for d in args.distances.split(",") if d.strip()]
    sizes = parse_sizes(args.memory_sizes, "--memory-sizes")
    ks = [int(k) for k in args.k.split(",") if k.strip()] if args.k else [None]
    if not distances or any(d < task.bindings * task.width for d in distances):
        raise ValueError(f"distances must be >= {task.bindings * task.width} (bindings x statement bytes), got {distances}")
    if not ks or any(k is not None and k < 1 for k in ks):
        raise ValueError(f"--k: neighbour counts must be >= 1, got {args.k}")
    if any(k is not None and 0 < size < k for k in ks for size in sizes):
        raise ValueError(f"--k {args.k}: a neighbour count exceeds a memory size in {sizes}")
    seq_len = args.seq_len or train_config.get("seq_len", 512)
    curves = {}
    for k in ks:
        model = load_model(checkpoint["path"], device=args.device,
                           **({} if k is None else {"num_retrieved_memories": k}))
        for size in sizes:
            label = "memory off" if size == 0 else f"memory {size}" + ("" if k is None else f", k = {k}")
            if label in curves:
                continue
            curves[label] = evaluate_recall(model, task, distances, documents=args.documents, memory_size=size,
                                            seq_len=seq_len, device=args.device, seed=args.seed)
    print("| memory | " + " | ".join(str(d) for d in distances) + " |")
    print("|---|" + "---|" * len(distances))
    for label, result in curves.items():
        print(f"| {label} | " + " | ".join(f"{v['accuracy']:.3f}" for v in result["by_distance"].values()) + " |")
    context = seq_len + model.config.xl_max_memories
    print(f"(exact-match recall by distance in bytes; local + XL context is {context} bytes; chance "
          f"{next(iter(curves.values()))['chance_accuracy']:.1e})")
    output = Path(args.output) if args.output else Path(checkpoint["path"])
    output.mkdir(parents=True, exist_ok=True)
    (output / "recall.json").write_text(json.dumps(curves, indent=2) + "\n")
    plot_recall(curves, str(output / "recall.png"), context=context)
    print(f"wrote {output / 'recall.json'} and {output / 'recall.png'}")


def add_recall_command(sub: argparse._SubParsersAction) -> None:
    recall = sub.add_parser("recall", help="exact-match recall of key -> value bindings by distance (train with --data recall)",
                            formatter_class=HelpFormatter)
    recall.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    recall.add_argument("--distances", default="88,176,352,704,1408,2048,2816,5632", help="binding-to-query distances (bytes)")
    recall.add_argument("--memory-sizes", default="0,16384", help="kNN memory sizes to evaluate (0 = memory off)")
    recall.add_argument("--documents", type=int, default=64, help="documents per distance (8 queries each)")
    recall.add_argument("--k", default=None,
                        help="neighbours retrieved per query, comma list (default: the model's); e.g. 1,2,4,32")
    recall.add_argument("--seed", type=int, default=1234,
                        help="seed of the evaluation documents (1234: the reported ones; pick settings on another)")
    recall.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    recall.add_argument("--output", default=None, help="folder for recall.json and recall.png (default: the checkpoint)")
    recall.add_argument("--device", default="cpu", help="torch device")
    recall.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    recall.set_defaults(func=cmd_recall)
