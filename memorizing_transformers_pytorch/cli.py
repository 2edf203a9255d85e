"""Command line: ``memorizing-transformers {train,eval,demo,generate,longbench,tokenizer,prepare} ...`` (or
``python -m memorizing_transformers_pytorch``).

Other programs extend it: ``main(argv, extend=...)`` lets them add subcommands (``python -m experiments``
adds the recall and names experiments this way, and registers their data sources).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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
from .train_config import TrainConfig

__all__ = ["main", "build_parser", "add_eval_arguments", "parse_sizes", "missing_extra", "EXTRAS"]


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
    """The preset, then the JSON files, then the tokenizer's num_tokens and ids, then single flags; with
    ``--resume``, the run's saved configs (``_resumed_configs``)."""
    from .data import source_tokenizer
    from .tokenizer import BYTES

    if getattr(args, "resume", False):
        return _resumed_configs(args)
    train_config = TrainConfig.from_dict(_collect(args, TrainConfig, _read_json(args.train_config, "training config")))
    model_base = {**CONFIGS[args.preset or "demo"], **_read_json(args.model_config, "model config")}
    tokenizer = source_tokenizer(train_config.data, train_config.tokenizer)
    if tokenizer is not BYTES:
        model_base.update(tokenizer.model_fields())
    model_values = _collect(args, MemorizingTransformerConfig, model_base)
    try:  # a value of the wrong type in a JSON config is the user's error, not a bug: report it in one line
        return MemorizingTransformerConfig.from_dict(model_values), train_config
    except TypeError as error:
        raise ValueError(f"invalid config: {error}") from None


def _resumed_configs(args: argparse.Namespace) -> tuple[MemorizingTransformerConfig, TrainConfig]:
    """The configs saved in the run's latest checkpoint. What the command line gives explicitly (flags, JSON
    files, a preset) must agree with them, except the settings a resumed run may change (``RESUMABLE_CHANGES``:
    --steps, --max-minutes, ...), which are taken.

    Raises:
        FileNotFoundError: no checkpoint in the run folder. ValueError: a setting that contradicts the run's.
    """
    from .checkpoint import latest_checkpoint, load_config
    from .train_config import RESUMABLE_CHANGES

    run_dir = Path(args.run_dir or TrainConfig.run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'} (start the run without --resume)")
    saved_model = load_config(latest)
    saved_train = TrainConfig.from_dict(read_json_object(latest / "train_config.json", "training config"))
    given_train = _collect(args, TrainConfig, _read_json(args.train_config, "training config"))
    given_model = _collect(args, MemorizingTransformerConfig, _read_json(args.model_config, "model config"))
    if args.preset:
        tokenizer_fields = {"num_tokens", "pad_id", "clear_memories_on_sos_token_id"}  # set by the data's tokenizer
        given_model = {**{k: v for k, v in CONFIGS[args.preset].items() if k not in tokenizer_fields}, **given_model}

    def refuse(field: str, given: Any, saved: Any, where: Path) -> None:
        flag = "--" + field.replace("_", "-")
        raise ValueError(f"--resume: {flag} {given!r} contradicts the run's {field}={saved!r} ({where}); resume "
                         f"without it, or start a new run (another --run-dir, or --overwrite)")

    changes = {}
    for field, value in given_train.items():
        if field == "run_dir":
            continue
        if field in RESUMABLE_CHANGES:
            changes[field] = value
        elif value != getattr(saved_train, field):
            refuse(field, value, getattr(saved_train, field), latest / "train_config.json")
    for field, value in given_model.items():
        saved = getattr(saved_model, field)
        if (tuple(value) if isinstance(value, list) else value) != saved:
            refuse(field, value, saved, latest / "config.json")
    return saved_model, dataclasses.replace(saved_train, run_dir=str(run_dir), **changes)


def _train_parser(sub: argparse._SubParsersAction, name: str, description: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=description, description=description,
                            formatter_class=HelpFormatter)
    parser.add_argument("--preset", default=None, choices=tuple(CONFIGS),
                        help="named model config (configs.py; default: demo); --model-config and flags override "
                             "its fields")
    parser.add_argument("--model-config", metavar="JSON", help="model config JSON file; flags override it")
    parser.add_argument("--train-config", metavar="JSON", help="training config JSON file; flags override it")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    _add_dataclass_arguments(parser, TrainConfig, {}, "training")
    _add_dataclass_arguments(parser, MemorizingTransformerConfig, CONFIGS["demo"], "model (defaults: --preset demo)")
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("evaluation")
    group.add_argument("--eval-data", default=None, help="documents to evaluate on (default: the training data)")
    group.add_argument("--split", default="test", choices=("train", "valid", "test", "all"),
                       help="which split (a folder's files are split 90 / 5 / 5 by a hash of their paths; all: every "
                            "document, e.g. for a folder of your own that training did not read)")
    group.add_argument("--memory-sizes", default="0,1024,4096,16384,65536",
                       help="comma-separated kNN memory sizes per stream to evaluate (0 = memory off)")
    group.add_argument("--max-docs", type=int, default=16, help="evaluate the N longest documents (0 = all)")
    group.add_argument("--max-doc-bytes", type=int, default=0,
                       help="cut each document to this many tokens (bytes for a byte-level model; 0 = no cut)")
    group.add_argument("--eval-batch-size", type=int, default=2, help="streams read in parallel")
    group.add_argument("--output", default=None,
                       help="folder for eval.json and eval.png (default: the --checkpoint folder as given)")


def add_runtime_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """How a loaded model runs (changes no weight): ``--compile`` and ``--attention-kernel``."""
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each layer (the memory search stays eager; slow at first)")
    parser.add_argument("--attention-kernel", choices=("sdpa", "flex"), default=None,
                        help="local attention kernel (default: the checkpoint's; see masks.py)")


def load_for_running(args: argparse.Namespace, checkpoint: str, device: str) -> Any:
    """``load_model`` with the runtime flags of ``add_runtime_arguments`` applied."""
    from .checkpoint import load_model

    kernel = getattr(args, "attention_kernel", None)
    model = load_model(checkpoint, device=device, **({"attention_kernel": kernel} if kernel else {}))
    return model.compile_layers() if getattr(args, "compile", False) else model


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
    from .checkpoint import checkpoint_tokenizer
    from .data import load_documents
    from .evaluate import evaluate, format_table, select_documents
    from .plots import save_result
    from .tokenizer import check_same_tokenizer

    device = str(distributed.setup(device))  # under torchrun, ranks share the documents and sum the results
    tokenizer = checkpoint_tokenizer(checkpoint, getattr(args, "tokenizer", None))
    model = load_for_running(args, checkpoint, device)
    baseline, label = None, "second checkpoint (kNN memory off)"
    if getattr(args, "baseline_checkpoint", None):
        from .checkpoint import load_checkpoint

        check_same_tokenizer(checkpoint_tokenizer(args.baseline_checkpoint), tokenizer,
                             f"--baseline-checkpoint {args.baseline_checkpoint} against {checkpoint}")
        baseline = load_for_running(args, args.baseline_checkpoint, device)
        trained_with_memory = load_checkpoint(args.baseline_checkpoint).get("train_config", {}).get("knn_memory", True)
        if not baseline.config.memorizing_layers:
            label = "baseline (no kNN memory)"
        elif not trained_with_memory:
            label = "baseline (trained with kNN memory off)"
    documents = select_documents(load_documents(data, args.split, tokenizer), max_docs=args.max_docs or None,
                                 max_doc_bytes=args.max_doc_bytes or None)
    sizes = parse_sizes(args.memory_sizes, "--memory-sizes")
    started = time.perf_counter()
    result = evaluate(model, documents, memory_sizes=sizes, baseline=baseline, baseline_label=label, tokenizer=tokenizer,
                      batch_size=args.eval_batch_size, seq_len=seq_len, device=device)
    result["checkpoint"] = str(checkpoint)
    result["eval_seconds"] = time.perf_counter() - started
    output = Path(args.output or getattr(args, "checkpoint", None) or checkpoint)  # the folder the user named
    if distributed.is_main():
        json_path, png_path = save_result(result, output)
        print(format_table(result))
        print(f"wrote {json_path} and {png_path}")
    return result


def cmd_train(args: argparse.Namespace) -> None:
    from .train import Interrupted, train

    model_config, train_config = _model_and_train_configs(args)
    try:
        summary = train(model_config, train_config, resume=args.resume, overwrite=args.overwrite)
    except Interrupted as stop:
        if distributed.is_main():
            print(f"stopped by {stop.signal_name} at step {stop.step}; checkpoint saved. Continue with: "
                  f"memorizing-transformers train --run-dir {stop.run_dir} --resume", file=sys.stderr)
        sys.exit(143 if stop.signal_name == "SIGTERM" else 130)
    if distributed.is_main():
        print(f"trained to step {summary['step']} in {summary['elapsed_s']:.0f}s; run folder: {summary['run_dir']}")


def cmd_eval(args: argparse.Namespace) -> None:
    from .checkpoint import load_checkpoint
    from .hf import is_hf_folder

    if is_hf_folder(args.checkpoint):  # a Hugging Face model folder (hf.py)
        _eval_hf(args, parse_sizes(args.memory_sizes, "--memory-sizes"))
        return

    checkpoint = load_checkpoint(args.checkpoint)
    train_config = checkpoint.get("train_config", {})
    data = args.eval_data or train_config.get("data", "stdlib")
    seq_len = args.seq_len or train_config.get("seq_len", 512)
    _run_eval(args, str(checkpoint["path"]), data, seq_len, args.device)


def _eval_hf(args: argparse.Namespace, memory_sizes: list[int]) -> dict[str, Any]:
    """``eval --checkpoint HF_FOLDER``: bits per byte with the memory on, off and by size.

    A byte-level folder (no tokenizer) is evaluated exactly as our own checkpoints (``evaluate.evaluate``);
    with a tokenizer each document is read as one stream of its tokens, and its bits are divided by its bytes.
    """
    from .data import load_documents
    from .evaluate import evaluate, format_table, select_documents, token_log_probs
    from .hf import load_folder
    from .plots import save_result

    if getattr(args, "baseline_checkpoint", None):
        raise ValueError("--baseline-checkpoint is not supported with a Hugging Face model folder: evaluate each "
                         "folder on its own (memory size 0 is the same weights without memory)")
    model, tokenizer, seq_len = load_folder(args.checkpoint, device=args.device, tokenizer=getattr(args, "tokenizer", None),
                                            seq_len=args.seq_len)
    documents = select_documents(load_documents(args.eval_data or "stdlib", args.split), max_docs=args.max_docs or None,
                                 max_doc_bytes=args.max_doc_bytes or None)
    started = time.perf_counter()
    if tokenizer is None:
        result = evaluate(model, documents, memory_sizes=memory_sizes, batch_size=args.eval_batch_size,
                          seq_len=seq_len, device=args.device)
    else:
        sos = [model.config.clear_memories_on_sos_token_id] if tokenizer.bos_token_id is not None else []
        streams = [sos + list(tokenizer(bytes(document).decode("utf-8", errors="replace"),
                                        add_special_tokens=False)["input_ids"]) for document in documents]
        total_bytes = sum(len(d) for d in documents)
        by_size = {}
        for size in memory_sizes:
            bits = sum(-float(token_log_probs(model, stream, memory_size=size, seq_len=seq_len, device=args.device)[0]
                              .sum()) / math.log(2) for stream in streams)
            by_size[str(size)] = bits / total_bytes
        on = by_size.get(str(model.config.max_knn_memories), by_size[str(max(memory_sizes))])
        off = by_size.get("0", on)
        result = {"bits_per_byte": {"with_memory": on, "without_memory": off}, "by_memory_size": by_size,
                  "trained_memory_size": model.config.max_knn_memories, "documents": len(documents),
                  "bytes": total_bytes, "seq_len": seq_len, "memory_gain_percent": 100.0 * (off - on) / off}
    result["checkpoint"] = str(args.checkpoint)
    result["eval_seconds"] = time.perf_counter() - started
    json_path, png_path = save_result(result, args.output or args.checkpoint)
    print(format_table(result))
    print(f"wrote {json_path} and {png_path}")
    return result


def cmd_demo(args: argparse.Namespace) -> None:
    from .demo import run_demo_training

    model_config, train_config = _model_and_train_configs(args)
    started = time.perf_counter()
    memory_run, baseline_run = run_demo_training(model_config, train_config, copy_warmup_steps=args.copy_warmup_steps)
    trained = time.perf_counter() - started
    print(f"[demo] training took {trained:.0f}s; evaluating on held-out documents")
    args.baseline_checkpoint = str(baseline_run)
    args.output = args.output or train_config.run_dir
    _run_eval(args, str(memory_run), train_config.data, train_config.seq_len, train_config.device)
    print(f"[demo] total {time.perf_counter() - started:.0f}s")


def cmd_generate(args: argparse.Namespace) -> None:
    """Reads ``--context-file`` and the prompt into memory, then streams the continuation to stdout."""
    from .checkpoint import checkpoint_tokenizer, load_checkpoint
    from .generation import reading_progress
    from .hf import is_hf_folder

    if args.prompt is not None and args.prompt_file is not None:
        raise ValueError("give either --prompt or --prompt-file, not both")
    if is_hf_folder(args.checkpoint):  # a Hugging Face model folder (hf.py)
        _generate_hf(args)
        return
    checkpoint = load_checkpoint(args.checkpoint)
    seq_len = args.seq_len or checkpoint.get("train_config", {}).get("seq_len", 512)
    tokenizer = checkpoint_tokenizer(checkpoint["path"], args.tokenizer)
    model = load_for_running(args, checkpoint["path"], args.device)
    context, prompt = (text.decode("utf-8", errors="replace") for text in _context_and_prompt(args))
    stream = [tokenizer.sos_id, *tokenizer.encode(context + prompt).tolist()]
    decode = tokenizer.stream_decoder()
    sys.stdout.write(prompt)
    started = time.perf_counter()
    out = model.generate(
        torch.tensor([stream], dtype=torch.long, device=args.device), max_new_tokens=args.max_new_tokens,
        seq_len=seq_len, use_knn_memory=args.memory_size != 0, max_memories=args.memory_size or None,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_token_id=tokenizer.sos_id,
        generator=torch.Generator(device=args.device).manual_seed(args.seed), on_read=reading_progress(started),
        on_token=lambda token: _write(decode(int(token[0]))),
    )
    _generation_summary(len(stream), out, time.perf_counter() - started)


def _generate_hf(args: argparse.Namespace) -> None:
    """``generate --checkpoint HF_FOLDER``: as ``cmd_generate``, with the folder's tokenizer (or bytes), the
    segments aligned so that the prompt's end is in the last one (``MemorizingHFModel.generate_aligned``)."""
    import codecs

    from .generation import reading_progress
    from .hf import load_folder

    model, tokenizer, seq_len = load_folder(args.checkpoint, device=args.device, tokenizer=getattr(args, "tokenizer", None),
                                            seq_len=args.seq_len)
    context, prompt = _context_and_prompt(args)
    sos = model.config.clear_memories_on_sos_token_id
    if tokenizer is None:
        ids = list(context + prompt)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        show = lambda token: decoder.decode(bytes([int(token[0])]))
        eos = sos
    else:
        ids = tokenizer((context + prompt).decode("utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        generated: list[int] = []
        shown = [""]

        def show(token: torch.Tensor) -> str:
            generated.append(int(token[0]))
            text = tokenizer.decode(generated)
            new, shown[0] = text[len(shown[0]) :], text
            return new

        eos = tokenizer.eos_token_id
    stream = ([sos] if sos is not None else []) + ids
    sys.stdout.write(prompt.decode("utf-8", errors="replace"))
    started = time.perf_counter()
    out = model.generate_aligned(
        torch.tensor([stream], dtype=torch.long, device=args.device), max_new_tokens=args.max_new_tokens,
        seq_len=seq_len, use_knn_memory=bool(model.config.memorizing_layers) and args.memory_size != 0,
        max_memories=args.memory_size or None, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        eos_token_id=eos, generator=torch.Generator(device=args.device).manual_seed(args.seed),
        on_read=reading_progress(started), on_token=lambda token: _write(show(token)))
    _generation_summary(len(stream), out, time.perf_counter() - started)


def _context_and_prompt(args: argparse.Namespace) -> tuple[bytes, bytes]:
    """``--context-file`` and ``--prompt`` or ``--prompt-file``, as bytes (``tokenizer.read_prompt_bytes``)."""
    from .tokenizer import read_prompt_bytes

    prompt = args.prompt.encode() if args.prompt is not None else b""
    if args.prompt_file is not None:
        prompt = read_prompt_bytes(args.prompt_file, "prompt file")
    context = read_prompt_bytes(args.context_file, "context file") if args.context_file else b""
    return context, prompt


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _generation_summary(read: int, out: Any, seconds: float) -> None:
    """The line after the continuation (stderr): tokens read and generated, and what the memory holds."""
    sys.stdout.write("\n")
    counts = [int(m.count[0]) for m in out.state.knn_memories] if out.state.knn_memories else []
    held = f"kNN memory holds {counts}" if counts else "kNN memory off"  # pairs per memorizing layer
    print(f"[{read} tokens read, {out.tokens.shape[1]} generated in {seconds:.1f}s; {held}]", file=sys.stderr)


def _parse_list(text: str, kind: type, flag: str) -> list[Any]:
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be a comma-separated list of {kind.__name__}s, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} is empty")
    return values


def cmd_longbench(args: argparse.Namespace) -> None:
    from .longbench import format_table, load_model_under_test, run
    from .longbench.plot import plot_heatmap
    from .longbench.runner import log_line
    from .longbench.tasks import TASKS, check_task

    tasks = list(TASKS) if args.tasks == "all" else [check_task(t) for t in _parse_list(args.tasks, str, "--tasks")]
    lengths = _parse_list(args.lengths, int, "--lengths")
    depths = _parse_list(args.depths, float, "--depths")
    if any(n < 1 for n in lengths) or any(not 0 <= d <= 1 for d in depths):
        raise ValueError("--lengths must be positive and --depths in [0, 1]")
    model = load_model_under_test(args.checkpoint, device=args.device, seq_len=args.seq_len,
                                  memory_size=args.memory_size, plain_window=args.plain_window,
                                  tokenizer=args.tokenizer)
    settings = list(model.settings) if args.settings == "all" else _parse_list(args.settings, str, "--settings")
    log_line(f"longbench: {model.name} ({model.unit}, segments of {model.seq_len}); tasks {', '.join(tasks)}; "
             f"lengths {lengths}; depths {depths}; settings {settings}; results in {args.output}")
    result = run(model, tasks=tasks, lengths=lengths, depths=depths, samples=args.samples, settings=settings,
                 output=args.output, seed=args.seed, haystack=args.haystack, values=args.values, log=log_line)
    table = format_table(result["samples"])
    output = Path(args.output)
    (output / "summary.md").write_text(table + "\n")
    png = plot_heatmap(result["samples"], output / "heatmap.png", title=f"{model.name}: score by length and depth")
    print(table)
    print(f"wrote {output / 'results.json'}, {output / 'summary.md'} and {png}")


def cmd_tokenizer(args: argparse.Namespace) -> None:
    from .data import load_documents, source_tokenizer
    from .tokenizer import BYTES, encoding_throughput, train_tokenizer

    if source_tokenizer(args.data) is not BYTES:
        raise ValueError(f"data source {args.data!r} holds token ids already; train a tokenizer on text")
    texts = [d.tobytes().decode("utf-8", errors="replace") for d in load_documents(args.data, "train")]
    size = sum(len(text.encode("utf-8")) for text in texts)
    print(f"training a byte-level BPE of {args.vocab_size} tokens on {len(texts)} documents ({size / 1e6:.1f} MB) "
          f"of {args.data!r}, train split", file=sys.stderr)
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts, vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                                progress=sys.stderr.isatty())
    trained_s = time.perf_counter() - started
    path = tokenizer.save(args.out)
    sample, sampled = [], 0
    for text in texts:  # throughput on the first --measure-mb of the split
        if sampled >= args.measure_mb * 1e6:
            break
        sample.append(text)
        sampled += len(text)
    speed = encoding_throughput(tokenizer, sample)
    print(json.dumps({"tokenizer": str(path), "num_tokens": tokenizer.num_tokens, "pad_id": tokenizer.pad_id,
                      "sos_id": tokenizer.sos_id, "training_s": round(trained_s, 2),
                      "encoding": {k: round(v, 3) if isinstance(v, float) else v for k, v in speed.items()}}))
    print(f"wrote {path}: {tokenizer.num_tokens} tokens, trained in {trained_s:.1f}s; encodes {speed['tokens_per_s']:,.0f} "
          f"tokens/s ({speed['bytes_per_token']:.2f} bytes per token)", file=sys.stderr)


def cmd_prepare(args: argparse.Namespace) -> None:
    from .data import prepare_shards
    from .tokenizer import HuggingFaceTokenizer

    tokenizer = HuggingFaceTokenizer.from_file(args.tokenizer)
    started = time.perf_counter()
    meta = prepare_shards(args.data, args.out, tokenizer, replace=args.force)
    seconds = time.perf_counter() - started
    tokens = sum(split["tokens"] for split in meta["splits"].values())
    for name, split in meta["splits"].items():
        print(f"{name}: {split['documents']} documents, {split['tokens']} tokens, {split['bytes']} bytes "
              f"({split['bytes'] / max(1, split['tokens']):.2f} bytes per token)")
    print(f"wrote {args.out} ({meta['dtype']}) in {seconds:.1f}s: {tokens / seconds:,.0f} tokens/s; "
          f"train with --data shards:{args.out}")


# the demo's recipe (demo.py, dev/LOG.md 2026-12-02): the small model with its memorizing layer first and token
# shift over 3 tokens, so that a 400-step copy warm-up forms the copy circuit in it; then 1,500 steps on the stdlib
DEMO_DEFAULTS = dict(preset="small", memorizing_layers=(1,), token_shift=3, max_knn_memories=4096,
                     run_dir="runs/demo", steps=1500, warmup_steps=50, checkpoint_every=0, log_every=25, lr=2e-3,
                     max_docs=4, max_doc_bytes=32768, memory_sizes="0,1024,4096,16384", copy_warmup_steps=400)


def build_parser(extend: Callable[[argparse._SubParsersAction], None] | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand; ``extend(subparsers)`` may add more (each sets ``func``)."""
    parser = argparse.ArgumentParser(prog="memorizing-transformers",
                                     description="Train, evaluate and demo Memorizing Transformers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train_parser = _train_parser(sub, "train", "train a model (carries kNN and XL memories across segments)")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run in --run-dir from its latest checkpoint, with its own settings "
                                   "(only --steps, --max-minutes, the logging / checkpoint / eval intervals and "
                                   "--tensorboard may change)")
    train_parser.add_argument("--overwrite", action="store_true",
                              help="delete the run already in --run-dir (its checkpoints, metrics and TensorBoard "
                                   "events) and start anew")
    train_parser.set_defaults(func=cmd_train)

    demo = _train_parser(sub, "demo", "a copy warm-up, then a memory model and a baseline (memory off) trained side "
                                      "by side on the standard library, then evaluated: memory on, off, by size")
    demo.add_argument("--copy-warmup-steps", type=int, help="steps of the copy warm-up (copy_warmup.py) first; 0: none")
    add_eval_arguments(demo)
    demo.set_defaults(func=cmd_demo, **DEMO_DEFAULTS)

    ev = sub.add_parser("eval", help="bits per byte with memory on/off and by memory size",
                        formatter_class=HelpFormatter)
    ev.add_argument("--checkpoint", required=True,
                    help="checkpoint folder, run folder (its latest checkpoint) or Hugging Face model folder")
    ev.add_argument("--baseline-checkpoint", default=None, help="a model trained without memorizing layers, to compare")
    ev.add_argument("--tokenizer", default=None,
                    help="tokenizer.json or a folder holding one (default: the checkpoint's; must match it)")
    ev.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    ev.add_argument("--device", default="cpu", help="torch device")
    ev.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_eval_arguments(ev)
    add_runtime_arguments(ev)
    ev.set_defaults(func=cmd_eval)

    gen = sub.add_parser("generate", help="read a context into memory, then generate text, streamed",
                         formatter_class=HelpFormatter)
    gen.add_argument("--checkpoint", required=True, help="checkpoint folder, run folder or Hugging Face model folder")
    gen.add_argument("--tokenizer", default=None,
                     help="tokenizer.json or a folder holding one (default: the checkpoint's; must match it)")
    gen.add_argument("--prompt", default=None, help="prompt text")
    gen.add_argument("--prompt-file", default=None, help="read the prompt from this file")
    gen.add_argument("--context-file", default=None, help="read this file into memory before the prompt")
    gen.add_argument("--max-new-tokens", type=int, default=256, help="tokens to generate (bytes for a byte-level model)")
    gen.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    gen.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling threshold")
    gen.add_argument("--memory-size", type=int, default=None,
                     help="kNN memory size (default: the trained size; 0 = memory off)")
    gen.add_argument("--seq-len", type=int, default=None, help="segment length (default: the training run's)")
    gen.add_argument("--seed", type=int, default=0, help="sampling seed")
    gen.add_argument("--device", default="cpu", help="torch device")
    gen.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    add_runtime_arguments(gen)
    gen.set_defaults(func=cmd_generate)

    from .longbench.tasks import HAYSTACKS, TASKS, VALUE_KINDS

    bench = sub.add_parser(
        "longbench", help="long-context tasks (passkey, needles, variable tracking, common words, key-value) with "
                          "memory on and off", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Long-context benchmark: each prompt is read a segment at a time (into the kNN memory for "
                    "the 'memory' setting), then the answer is generated greedily and scored.\n\ntasks:\n"
                    + "\n".join(f"  {name:18s} {text}" for name, text in TASKS.items())
                    + "\n\nhaystacks:\n" + "\n".join(f"  {name:18s} {text}" for name, text in HAYSTACKS.items())
                    + "\n\nsettings: memory (kNN memory on), no-memory (off), plain (a Hugging Face model's own "
                      "full attention over its last --plain-window tokens)")
    bench.add_argument("--checkpoint", required=True,
                       help="our checkpoint or run folder, a Hugging Face model folder, or a GGUF file")
    bench.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    bench.add_argument("--lengths", default="4096,16384", help="prompt lengths in the model's units (tokens, or bytes "
                                                               "for a byte-level model)")
    bench.add_argument("--depths", default="0.1,0.5,0.9", help="where the facts go: 0 = start, 1 = end")
    bench.add_argument("--samples", type=int, default=1, help="prompts per task, length and depth")
    bench.add_argument("--settings", default="all", help="comma-separated: memory, no-memory, plain; or all "
                                                         "the model has")
    bench.add_argument("--haystack", default="noise", help="noise, stdlib, or a text file or folder")
    bench.add_argument("--values", default="numbers", choices=VALUE_KINDS, help="the needles' values")
    bench.add_argument("--seq-len", type=int, default=None, help="segment length (default: the model's training run's, "
                                                                 "else 512)")
    bench.add_argument("--memory-size", type=int, default=None, help="cap on the kNN memory (default: the whole prompt)")
    bench.add_argument("--plain-window", type=int, default=None,
                       help="tokens the plain setting sees (default: the model's context, at most 8192)")
    bench.add_argument("--tokenizer", default=None, help="tokenizer.json or folder (default: the checkpoint's)")
    bench.add_argument("--seed", type=int, default=0, help="sample seed")
    bench.add_argument("--output", default="runs/longbench", help="folder for results.json, summary.md, heatmap.png; "
                                                                  "a run there with the same settings is continued")
    bench.add_argument("--device", default="cpu", help="torch device")
    bench.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    bench.set_defaults(func=cmd_longbench)

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on a source's train split",
                         formatter_class=HelpFormatter)
    tok.add_argument("--data", default="stdlib", help="text source (as train's --data)")
    tok.add_argument("--vocab-size", type=int, default=4096, help="tokens in all: 2 special, 256 bytes, the merges")
    tok.add_argument("--min-frequency", type=int, default=2, help="merge only pairs seen this often")
    tok.add_argument("--out", required=True, help="tokenizer.json to write (or a folder to write it into)")
    tok.add_argument("--measure-mb", type=float, default=32.0, help="measure encoding throughput on this much of the split")
    tok.set_defaults(func=cmd_tokenizer, threads=None)

    prep = sub.add_parser("prepare", help="tokenize a text source once into token shards (read with --data shards:OUT)",
                          formatter_class=HelpFormatter)
    prep.add_argument("--data", default="stdlib", help="text source (as train's --data)")
    prep.add_argument("--tokenizer", required=True, help="tokenizer.json or a folder holding one")
    prep.add_argument("--out", required=True, help="folder to write the shards into")
    prep.add_argument("--force", action="store_true", help="replace token shards already at --out")
    prep.set_defaults(func=cmd_prepare, threads=None)
    if extend is not None:
        extend(sub)
    return parser


# the package each optional dependency comes with: pip install 'memorizing-transformers-pytorch[EXTRA]'
EXTRAS = {"safetensors": "train", "tqdm": "train", "matplotlib": "train", "tokenizers": "train", "datasets": "train",
          "pyarrow": "train", "tensorboard": "train", "transformers": "hf", "gguf": "gguf", "accelerate": "gguf"}


def missing_extra(error: ModuleNotFoundError) -> str | None:
    """The one-line message for a missing optional dependency, or None for any other missing module."""
    name = (error.name or "").split(".")[0]
    if name not in EXTRAS:
        return None
    extra = EXTRAS[name]
    return (f"this command needs {name}, from the [{extra}] extra: pip install "
            f"'memorizing-transformers-pytorch[{extra}]' (or pip install -e '.[{extra}]' in a checkout)")


def main(argv: list[str] | None = None, *, extend: Callable[[argparse._SubParsersAction], None] | None = None) -> None:
    parser = build_parser(extend)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        distributed.check_device(getattr(args, "device", None))
        args.func(args)
    except ModuleNotFoundError as error:
        message = missing_extra(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    except (ValueError, OSError) as error:  # bad input (CheckpointError is a ValueError); bugs keep their traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        distributed.cleanup()


if __name__ == "__main__":
    main()
