"""Command line: ``memorizing-transformers {train,eval,demo,generate} ...`` (or ``python -m memorizing_transformers_pytorch``).

Other programs extend it: ``main(argv, extend=...)`` lets them add subcommands (``python -m experiments``
adds the recall and names experiments this way, and registers their data sources).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import distributed
from .config import MemorizingTransformerConfig, read_json_object
from .configs import CONFIGS
from .train import TrainConfig

__all__ = ["main", "build_parser", "add_eval_arguments", "parse_sizes"]


def _docstring_help(cls: type) -> dict[str, str]:
    """Field descriptions from the ``Args:`` section of a dataclass docstring."""
    text = (cls.__doc__ or "").split("Args:", 1)[-1]
    helps: dict[str, str] = {}
    for match in re.finditer(r"^\s{8}([\w, ]+):\s(.*?)(?=^\s{8}[\w, ]+:\s|\Z)", text, re.S | re.M):
        for name in match.group(1).split(","):
            helps[name.strip()] = " ".join(match.group(2).split())
    return helps


def _parse_layers(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(",") if part.strip())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` (the dataclass options state their own default in the text)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def _add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, defaults: dict[str, Any], title: str) -> None:
    group = parser.add_argument_group(title)
    helps = _docstring_help(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = defaults.get(f.name, f.default)
        text = f.metadata.get("help") or helps.get(f.name, "")
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text = f"{text} (default: {shown})"
        if f.name in ("memorizing_layers", "xl_memory_layers"):
            group.add_argument(flag, type=_parse_layers, default=None, metavar="L1,L2", help=text)
        elif f.type in (bool, "bool"):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif "int | None" in str(f.type):
            group.add_argument(flag, type=int, default=None, help=text)
        else:
            kind = {"int": int, "float": float}.get(str(f.type).split(" ")[0], str)
            group.add_argument(flag, type=kind, default=None, help=text)


def _collect(args: argparse.Namespace, cls: type, base: dict[str, Any]) -> dict[str, Any]:
    values = dict(base)
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    return values


def _read_json(path: str | None, what: str) -> dict[str, Any]:
    return {} if path is None else read_json_object(path, what)


def _model_and_train_configs(args: argparse.Namespace) -> tuple[MemorizingTransformerConfig, TrainConfig]:
    model_base = {**CONFIGS[args.preset], **_read_json(args.model_config, "model config")}
    model_values = _collect(args, MemorizingTransformerConfig, model_base)
    train_values = _collect(args, TrainConfig, _read_json(args.train_config, "training config"))
    try:  # a value of the wrong type in a JSON config is the user's error, not a bug: report it in one line
        return MemorizingTransformerConfig.from_dict(model_values), TrainConfig.from_dict(train_values)
    except TypeError as error:
        raise ValueError(f"invalid config: {error}") from None


def _train_parser(sub: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=description, description=description,
                            formatter_class=HelpFormatter)
    parser.add_argument("--preset", default="demo", choices=tuple(CONFIGS),
                        help="named model config (configs.py); --model-config and flags override its fields")
    parser.add_argument("--model-config", metavar="JSON", help="model config JSON file; flags override it")
    parser.add_argument("--train-config", metavar="JSON", help="training config JSON file; flags override it")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _add_dataclass_arguments(parser, TrainConfig, {}, "training")
    _add_dataclass_arguments(parser, MemorizingTransformerConfig, CONFIGS["demo"], "model (defaults: --preset demo)")
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--eval-data", default=None, help="documents to evaluate on (default: the training data)")
    group.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split")
    group.add_argument("--memory-sizes", default="0,1024,4096,16384,65536",
                       help="comma-separated kNN memory sizes per stream to evaluate (0 = memory off)")
    group.add_argument("--max-docs", type=int, default=16, help="evaluate the N longest documents (0 = all)")
    group.add_argument("--max-doc-bytes", type=int, default=0, help="cut each document to this many bytes (0 = no cut)")
    group.add_argument("--eval-batch-size", type=int, default=2, help="streams read in parallel")
    group.add_argument("--output", default=None, help="folder for eval.json and eval.png (default: the run folder)")


def parse_sizes(text: str, flag: str) -> list[int]:
    """A comma-separated list of ints >= 0, e.g. memory sizes.

    Raises:
        ValueError: not a list of such ints.
    """
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise ValueError(f"{flag} must be a non-empty list of integers >= 0, got {text!r}")
    return values


def _run_eval(args: argparse.Namespace, checkpoint: str, data: str, seq_len: int, device: str) -> dict[str, Any]:
    from .checkpoint import load_model
    from .data import load_documents
    from .evaluate import evaluate, format_table, save, select_documents

    device = str(distributed.setup(device))  # under torchrun, ranks share the documents and sum the results
    model = load_model(checkpoint, device=device)
    baseline = load_model(args.baseline_checkpoint, device=device) if getattr(args, "baseline_checkpoint", None) else None
    documents = select_documents(load_documents(data, args.split), max_docs=args.max_docs or None,
                                 max_doc_bytes=args.max_doc_bytes or None)
    sizes = parse_sizes(args.memory_sizes, "--memory-sizes")
    started = time.perf_counter()
    result = evaluate(model, documents, memory_sizes=sizes, baseline=baseline, batch_size=args.eval_batch_size,
                      seq_len=seq_len, device=device)
    result["checkpoint"] = str(checkpoint)
    result["eval_seconds"] = time.perf_counter() - started
    output = Path(args.output) if args.output else Path(checkpoint)
    if distributed.is_main():
        json_path, png_path = save(result, output)
        print(format_table(result))
        print(f"wrote {json_path} and {png_path}")
    return result


def cmd_train(args: argparse.Namespace) -> None:
    from .train import train

    model_config, train_config = _model_and_train_configs(args)
    summary = train(model_config, train_config, resume=args.resume)
    if distributed.is_main():
        print(f"trained to step {summary['step']} in {summary['elapsed_s']:.0f}s; run folder: {summary['run_dir']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .hf import is_hf_folder, run_eval

    if is_hf_folder(args.checkpoint):  # a Hugging Face model folder (hf.py)
        run_eval(args, parse_sizes(args.memory_sizes, "--memory-sizes"))
        return

    checkpoint = load_checkpoint(args.checkpoint)
    train_config = checkpoint.get("train_config", {})
    data = args.eval_data or train_config.get("data", "stdlib")
    seq_len = args.seq_len or train_config.get("seq_len", 512)
    _run_eval(args, str(checkpoint["path"]), data, seq_len, args.device)


def cmd_demo(args: argparse.Namespace) -> None:
    from .train import train

    model_config, train_config = _model_and_train_configs(args)
    started = time.perf_counter()
    print(f"[demo] training on {train_config.data!r} for {train_config.steps} steps -> {train_config.run_dir}")
    train(model_config, train_config)
    trained = time.perf_counter() - started
    print(f"[demo] training took {trained:.0f}s; evaluating on held-out documents")
    args.baseline_checkpoint = None
    _run_eval(args, train_config.run_dir, train_config.data, train_config.seq_len, train_config.device)
    print(f"[demo] total {time.perf_counter() - started:.0f}s")


def cmd_generate(args: argparse.Namespace) -> None:
    import codecs

    from .checkpoint import load_checkpoint, load_model
    from .data import SOS_ID
    from .hf import is_hf_folder, run_generate

    if is_hf_folder(args.checkpoint):  # a Hugging Face model folder (hf.py)
        run_generate(args)
        return
    checkpoint = load_checkpoint(args.checkpoint)
    seq_len = args.seq_len or checkpoint.get("train_config", {}).get("seq_len", 512)
    model = load_model(checkpoint["path"], device=args.device)
    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("give either --prompt or --prompt-file, not both")
    prompt = args.prompt.encode() if args.prompt is not None else b""
    if args.prompt_file is not None:
        prompt = _read_bytes(args.prompt_file, "prompt file")
    context = _read_bytes(args.context_file, "context file") if args.context_file else b""
    stream = bytes([SOS_ID]) + context + prompt
    tokens = torch.tensor([list(stream)], dtype=torch.long, device=args.device)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    knn = None
    if model.config.memorizing_layers and args.memory_size != 0:
        knn = model.create_knn_memories(batch_size=1, max_memories=args.memory_size or None)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    sys.stdout.write(prompt.decode("utf-8", errors="replace"))

    def show(token: torch.Tensor) -> None:
        sys.stdout.write(decoder.decode(bytes([int(token[0])])))
        sys.stdout.flush()

    started = time.perf_counter()
    out = model.generate(
        tokens, max_new_tokens=args.max_new_tokens, seq_len=seq_len, knn_memories=knn, use_knn_memory=knn is not None,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=SOS_ID,
        generator=generator, on_token=show,
    )
    elapsed = time.perf_counter() - started
    sys.stdout.write(decoder.decode(b"", final=True) + "\n")
    held = f"kNN memory holds {[int(m.count[0]) for m in out.knn_memories]}" if out.knn_memories else "kNN memory off"
    print(f"[{len(stream)} tokens read, {out.tokens.shape[1]} generated in {elapsed:.1f}s; {held}]", file=sys.stderr)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    return data.replace(b"\x00", b" ").replace(b"\x02", b" ")


DEMO_TRAIN = dict(run_dir="runs/demo", steps=400, warmup_steps=50, checkpoint_every=100, lr=2e-3)


def build_parser(extend: Callable[[argparse._SubParsersAction], None] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; ``extend(subparsers)`` may add more (each sets ``func``)."""
    parser = argparse.ArgumentParser(prog="memorizing-transformers",
                                     description="Train, evaluate and demo Memorizing Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train_parser = _train_parser(sub, "train", "train a model (carries kNN and XL memories across segments)")
    train_parser.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its latest checkpoint")
    train_parser.set_defaults(func=cmd_train)

    demo = _train_parser(sub, "demo", "train a small model on the standard library, then evaluate memory on/off")
    add_eval_arguments(demo)
    demo.set_defaults(func=cmd_demo, **DEMO_TRAIN, max_docs=4, max_doc_bytes=32768, memory_sizes="0,1024,4096,16384")

    ev = sub.add_parser("eval", help="bits per byte with memory on/off and by memory size",
                        formatter_class=HelpFormatter)
    ev.add_argument("--checkpoint", required=True,
                    help="checkpoint folder, run folder (its latest checkpoint) or Hugging Face model folder")
    ev.add_argument("--baseline-checkpoint", default=None, help="a model trained without memorizing layers, to compare")
    ev.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    ev.add_argument("--device", default="cpu", help="torch device")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_eval_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="read a context into memory, then generate text, streamed",
                         formatter_class=HelpFormatter)
    gen.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or Hugging Face model folder")
    gen.add_argument("--prompt", default=None, help="prompt text")
    gen.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    gen.add_argument("--context-file", default=None, help="read this file into memory before the prompt")
    gen.add_argument("--max-new-tokens", type=int, default=256, help="bytes to generate")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely bytes")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    gen.add_argument("--memory-size", type=int, default=None,
                     help="kNN memory size (default: the trained size; 0 = memory off)")
    gen.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--device", default="cpu", help="torch device")
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    gen.set_defaults(func=cmd_generate)
    if extend is not None:
        extend(sub)
    return parser


def main(argv: list[str] | None = None, *, extend: Callable[[argparse._SubParsersAction], None] | None = None) -> None:
    parser = build_parser(extend)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except (ValueError, OSError) as error:  # bad input (CheckpointError is a ValueError); bugs keep their traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
