"""Running the tasks on a model: memory on, memory off, and (for a Hugging Face model) the plain model.

Settings:
    ``memory``     the prompt read a segment at a time (``--seq-len``) into the kNN memory, sized to hold all of
                   it (``--memory-size`` caps it), then greedy generation: the memory's reach.
    ``no-memory``  the same segments with the kNN memory off (our models keep their XL cache): what the local
                   window (and XL cache) alone can do.
    ``plain``      a Hugging Face model only: the model as released, with full attention over the prompt's last
                   ``--plain-window`` tokens (its trained context): its own ability.

``run`` writes ``results.json`` into the output folder after every sample (each sample's prompt length, depth,
expected items, answer, score and time) and skips the samples it already holds, so an interrupted run continues
where it stopped; it refuses a folder whose results were made with other settings.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .score import score
from .tasks import make_sample, uses_depth

__all__ = ["ModelUnderTest", "load_model_under_test", "run", "summarize", "format_table", "SETTINGS"]

SETTINGS = ("memory", "no-memory", "plain")
RESULTS_FILE = "results.json"


@dataclass
class ModelUnderTest:
    """A model the suite can ask: its units (tokens or bytes), its codec and ``answer(ids, setting, n)``."""

    name: str
    unit: str
    settings: tuple[str, ...]
    encode: Callable[[str], list[int]]
    decode: Callable[[list[int]], str]
    answer: Callable[[list[int], str, int], list[int]]
    seq_len: int


def _check_setting(setting: str, allowed: Sequence[str], name: str) -> None:
    if setting not in allowed:
        raise ValueError(f"setting {setting!r} is not available for {name}; its settings are: {', '.join(allowed)}")


def _memory_capacity(tokens: int, memory_size: int | None) -> int:
    capacity = 1024 * math.ceil((tokens + 1) / 1024)
    return capacity if memory_size is None else min(capacity, memory_size)


def _our_model(checkpoint: str, *, device: str, seq_len: int | None, memory_size: int | None,
               tokenizer: str | None) -> ModelUnderTest:
    from ..checkpoint import checkpoint_tokenizer, load_checkpoint, load_model

    info = load_checkpoint(checkpoint)
    seq_len = seq_len or info.get("train_config", {}).get("seq_len", 512)
    codec = checkpoint_tokenizer(info["path"], tokenizer)
    model = load_model(info["path"], device=device).eval()
    has_memory = bool(model.config.memorizing_layers)

    @torch.no_grad()
    def answer(ids: list[int], setting: str, new: int) -> list[int]:
        _check_setting(setting, settings, checkpoint)
        stream = torch.tensor([[codec.sos_id, *ids]], device=device)
        size = _memory_capacity(stream.shape[1] + new, memory_size) if setting == "memory" else None
        out = model.generate(stream, max_new_tokens=new, seq_len=seq_len, use_knn_memory=setting == "memory",
                             max_memories=size, temperature=0.0, eos_token_id=codec.sos_id)
        tokens = out.tokens[0].tolist()
        return tokens[: tokens.index(codec.sos_id)] if codec.sos_id in tokens else tokens  # up to the end marker

    settings = ("memory", "no-memory") if has_memory else ("no-memory",)
    return ModelUnderTest(str(checkpoint), "tokens" if codec.num_tokens > 258 else "bytes", settings,
                          lambda text: codec.encode(text).tolist(), lambda ids: codec.decode(ids), answer, seq_len)


def _hf_model(checkpoint: str, *, device: str, seq_len: int | None, memory_size: int | None,
              plain_window: int | None, tokenizer: str | None) -> ModelUnderTest:
    from ..hf import load_folder

    model, codec, seq_len = load_folder(checkpoint, device=device, tokenizer=tokenizer, seq_len=seq_len)
    config = model.hf.config
    window = plain_window or min(getattr(config, "max_position_embeddings", 2048) or 2048, 8192)
    sos = model.config.clear_memories_on_sos_token_id
    if codec is None:
        if model.num_tokens > 259:
            raise ValueError(f"{checkpoint} has no tokenizer and {model.num_tokens} tokens, so text cannot be "
                             f"encoded for it: pass --tokenizer")
        encode: Callable[[str], list[int]] = lambda text: list(text.encode())
        decode: Callable[[list[int]], str] = lambda ids: bytes(i for i in ids if i < 256).decode("utf-8", "replace")
        eos, unit = sos, "bytes"
    else:
        encode = lambda text: codec(text, add_special_tokens=False)["input_ids"]
        decode = lambda ids: codec.decode(ids, skip_special_tokens=True)
        eos, unit = codec.eos_token_id, "tokens"

    @torch.no_grad()
    def answer(ids: list[int], setting: str, new: int) -> list[int]:
        _check_setting(setting, SETTINGS, checkpoint)
        stream = ([sos] if sos is not None else []) + list(ids)
        options: dict[str, Any] = dict(max_new_tokens=new, temperature=0.0, eos_token_id=eos)
        if setting in ("memory", "no-memory"):  # the prompt's end and the answer in the last segment
            size = _memory_capacity(len(stream) + new, memory_size) if setting == "memory" else None
            out = model.generate_aligned(torch.tensor([stream], device=device), seq_len=seq_len,
                                         use_knn_memory=setting == "memory", max_memories=size, **options)
        else:  # the model's own full attention over the last tokens that fit its window with the answer
            keep = max(1, window - new - (sos is not None))
            tail = ([sos] if sos is not None and len(ids) > keep else []) + stream[-keep:]
            out = model.generate(torch.tensor([tail], device=device), seq_len=window, use_knn_memory=False, **options)
        return out.tokens[0].tolist()

    return ModelUnderTest(str(checkpoint), unit, SETTINGS, encode, decode, answer, seq_len)


def load_model_under_test(checkpoint: str, *, device: str = "cpu", seq_len: int | None = None,
                          memory_size: int | None = None, plain_window: int | None = None,
                          tokenizer: str | None = None) -> ModelUnderTest:
    """One of our checkpoints (a checkpoint or run folder), a Hugging Face model folder (with or without
    ``memorizing.json``) or a GGUF file."""
    from ..hf import is_hf_folder

    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"no such checkpoint, model folder or GGUF file: {checkpoint}")
    if is_hf_folder(checkpoint):
        return _hf_model(checkpoint, device=device, seq_len=seq_len, memory_size=memory_size,
                         plain_window=plain_window, tokenizer=tokenizer)
    if plain_window is not None:
        raise ValueError("--plain-window is for Hugging Face models (our models have no plain setting)")
    return _our_model(checkpoint, device=device, seq_len=seq_len, memory_size=memory_size, tokenizer=tokenizer)


# ------------------------------------------------------------------------------------------------ running
def _key(record: dict[str, Any]) -> tuple[Any, ...]:
    return record["task"], record["length"], record["depth"], record["sample"], record["setting"]


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, path)


def _load_results(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        held, records = data["config"], list(data["samples"])
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a results file of this suite: move it away or give another --output") \
            from None
    for field, value in config.items():
        if held.get(field) != value:
            raise ValueError(f"{path} holds results made with {field}={held.get(field)!r}, not {value!r}: give "
                             f"another --output, or the same settings to continue it")
    return records


def run(model: ModelUnderTest, *, tasks: Sequence[str], lengths: Sequence[int], depths: Sequence[float],
        samples: int, settings: Sequence[str], output: str | Path, seed: int = 0, haystack: str = "noise",
        values: str = "numbers", log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Every (task, length, depth, sample, setting) not yet in ``output/results.json``; returns the results.

    Tasks without a depth (``common_words``) run once per length and sample, recorded at depth 0.5. A length a
    task cannot reach is recorded as skipped, with the reason, and the run goes on.
    """
    for setting in settings:
        _check_setting(setting, model.settings, model.name)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / RESULTS_FILE
    config = {"model": model.name, "unit": model.unit, "seq_len": model.seq_len, "seed": seed, "haystack": haystack,
              "values": values}
    records = _load_results(path, config)
    done = {_key(r) for r in records}
    cells = [(task, length, depth if uses_depth(task) else 0.5, sample)
             for length in lengths for task in tasks for depth in depths for sample in range(samples)]
    cells = list(dict.fromkeys(cells))  # depthless tasks: once
    todo = [(c, s) for c in cells for s in settings if (*c, s) not in done]
    started, count = time.perf_counter(), lambda text: len(model.encode(text))
    for number, ((task, length, depth, sample), setting) in enumerate(todo, start=1):
        base = {"task": task, "length": length, "depth": depth, "sample": sample, "setting": setting}
        try:
            made = make_sample(task, length, depth, seed * 1000 + sample, count, haystack=haystack, values=values)
        except ValueError as error:
            records.append({**base, "skipped": str(error)})
            if log:
                log(f"[{number}/{len(todo)}] {task} {length}: skipped: {error}")
            _write_atomic(path, {"config": config, "samples": records})
            continue
        ids = model.encode(made.prompt)
        new = len(model.encode(" " + ", ".join(made.answers))) + 8
        began = time.perf_counter()
        got = model.decode(model.answer(ids, setting, new))
        seconds = time.perf_counter() - began
        result = score(made.answers, got)
        records.append({**base, "prompt_units": len(ids), "needle_offsets": list(made.needle_offsets),
                        "context_chars": len(made.context), "expected": list(made.answers), "got": got,
                        "score": result, "seconds": round(seconds, 3)})
        _write_atomic(path, {"config": config, "samples": records})
        if log:
            elapsed = time.perf_counter() - started
            log(f"[{number}/{len(todo)}] {task:17s} {length:>6d} depth {depth:.2f} #{sample} {setting:9s} "
                f"score {result:.2f} ({len(ids)} {model.unit}, {seconds:.0f}s; {elapsed / 60:.1f} min so far) "
                f"{', '.join(made.answers)[:40]!r} -> {got.strip()[:40]!r}")
    return {"config": config, "samples": records}


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean score per setting, task and length: ``{setting: {task: {length: mean}}}`` (skipped samples left out)."""
    sums: dict[tuple[str, str, int], list[float]] = {}
    for r in records:
        if "score" in r:
            sums.setdefault((r["setting"], r["task"], r["length"]), []).append(r["score"])
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (setting, task, length), scores in sorted(sums.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2])):
        out.setdefault(setting, {}).setdefault(task, {})[str(length)] = sum(scores) / len(scores)
    return out


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """A markdown table: one row per task and setting, one column per length (mean score, samples in brackets)."""
    lengths = sorted({r["length"] for r in records})
    counts: dict[tuple[str, str, int], int] = {}
    for r in records:
        if "score" in r:
            counts[(r["task"], r["setting"], r["length"])] = counts.get((r["task"], r["setting"], r["length"]), 0) + 1
    summary = summarize(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    settings = [s for s in SETTINGS if s in summary]
    lines = ["| task | setting | " + " | ".join(short_length(n) for n in lengths) + " |",
             "|---|---|" + "---|" * len(lengths)]
    for task in tasks:
        for setting in settings:
            row = summary.get(setting, {}).get(task, {})
            cells = [f"{row[str(n)]:.2f} ({counts[(task, setting, n)]})" if str(n) in row else "-" for n in lengths]
            lines.append(f"| {task} | {setting} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def short_length(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def log_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
