"""``python -m experiments names``: the names metric from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from memorizing_transformers_pytorch.checkpoint import load_checkpoint, load_model
from memorizing_transformers_pytorch.cli import HelpFormatter, add_eval_arguments, parse_sizes
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import select_documents

from .metric import name_recall

__all__ = ["add_names_command"]


def cmd_names(args: argparse.Namespace) -> None:
    checkpoint = load_checkpoint(args.checkpoint)
    train_config = checkpoint.get("train_config", {})
    model = load_model(checkpoint["path"], device=args.device)
    documents = select_documents(load_documents(args.eval_data or train_config.get("data", "stdlib"), args.split),
                                 max_docs=args.max_docs or None, max_doc_bytes=args.max_doc_bytes or None)
    sizes = parse_sizes(args.memory_sizes, "--memory-sizes")
    result = name_recall(model, documents, memory_sizes=sizes, min_distance=args.min_distance, prefix=args.prefix,
                         seq_len=args.seq_len or train_config.get("seq_len", 512), device=args.device)
    print("| memory size | mean log2 p(rest of name) | bits per byte | p > 0.5 | greedy writes it | better than off |")
    print("|---|---|---|---|---|---|")
    for size, row in result["by_memory_size"].items():
        size_text = "off" if size == "0" else size
        print(f"| {size_text} | {row['mean_log2_prob']:.2f} | {row['bits_per_byte']:.3f} | {row['exact_recall_at_0.5']:.3f} "
              f"| {row['greedy_writes_name']:.3f} | {row.get('fraction_better_than_off', float('nan')):.3f} |")
    print(f"({result['cases']} uses of names last seen >= {args.min_distance} bytes back, given their first "
          f"{result['prefix_bytes']} bytes)")
    cases, on_size = result["cases_detail"], max(sizes)
    if args.show and cases and on_size > 0 and 0 in sizes:
        # evenly spread over all cases (in document order), not the best ones
        count = min(args.show, len(cases))
        picked = [cases[round(i * (len(cases) - 1) / max(1, count - 1))] for i in range(count)]
        print(f"\nargmax at each byte after the first {args.prefix} (given the true bytes before it), "
              f"{len(picked)} of {len(cases)} cases, evenly spread:")
        print(f"| name | memory {on_size} | memory off |")
        print("|---|---|---|")
        for case in picked:
            shown = [case["name"][: args.prefix] + case["predicted"][key] for key in (str(on_size), "0")]
            cells = [text.encode("unicode_escape").decode("ascii").replace("|", "\\|") for text in shown]
            print(f"| `{case['name']}` | `{cells[0]}` | `{cells[1]}` |")
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=2) + "\n")


def add_names_command(sub: argparse._SubParsersAction) -> None:
    names = sub.add_parser("names", help="probability of recalling names last seen far back, memory on vs off",
                           formatter_class=HelpFormatter)
    names.add_argument("--checkpoint", required=True, help="checkpoint folder or run folder")
    names.add_argument("--min-distance", type=int, default=4096, help="bytes since the name's previous mention")
    names.add_argument("--prefix", type=int, default=2, help="bytes of each name given before it is scored")
    names.add_argument("--show", type=int, default=10,
                       help="print the model's argmax for this many cases, memory on (the largest size) and off")
    names.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    names.add_argument("--device", default="cpu", help="torch device")
    names.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_eval_arguments(names)
    names.set_defaults(func=cmd_names, memory_sizes="0,16384", max_docs=16, output=None)
