"""The demo (``memorizing-transformers demo``, ``bash scripts/demo.sh``): memory on, memory off, and a baseline.

1. A short copy warm-up (``copy_warmup.py``) teaches the model to copy by content, the skill a kNN memory
   needs; it reads no memory, so one warm-up serves both models below.
2. From the warm-up's weights, two runs train side by side on the same documents in the same order, one
   process and one thread each: the **memory** model, and the **baseline**, the same architecture trained
   with its memory off (XL cache only, ``--no-knn-memory``).
3. Both are evaluated on held-out documents: the memory model with its memory on, with it off (same
   weights) and at several memory sizes, and the baseline; ``eval.json`` and ``eval.png`` go to the run
   folder.

Each step is the normal ``train`` command; the runs' logs are ``memory.log`` and ``baseline.log``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .config import MemorizingTransformerConfig
from .data import source_tokenizer
from .tokenizer import BYTES
from .train import TrainConfig, train

__all__ = ["warmup_config", "run_demo_training"]

RUNS = ("warmup", "memory", "baseline")


def warmup_config(config: TrainConfig, steps: int, vocab: int | None = None) -> TrainConfig:
    """The copy warm-up of ``config``'s run: rows of 128 random bytes (``vocab=None``, a run that reads bytes) or
    token ids ``2 .. vocab - 1`` (``copy:vocab=V``, a run that reads a tokenizer's ids) holding a string and its
    copy, a constant learning rate, no memory (a row is shorter than the XL cache, so nothing would reach it). The
    copy source makes its own ids, so the warm-up takes no ``--tokenizer`` (the runs after it keep theirs)."""
    return dataclasses.replace(
        config, data="copy" if vocab is None else f"copy:vocab={vocab}", tokenizer="", seq_len=128, batch_size=8,
        steps=steps, warmup_steps=min(50, steps), min_lr_ratio=1.0, weight_decay=0.01, adam_beta2=0.999, grad_accum=1,
        checkpoint_every=0, log_every=50, knn_memory=False, init_from="", max_minutes=0.0, run_dir=str(Path(config.run_dir) / "warmup"))


def _prepare_folder(run_dir: Path) -> None:
    """Clears the runs of an earlier demo in ``run_dir``; refuses a folder the demo did not make."""
    marker = run_dir / "demo.json"
    taken = [run_dir / name for name in RUNS if (run_dir / name).exists()]
    if taken and not marker.exists():
        raise ValueError(f"{taken[0]} exists and was not made by the demo; remove it or choose another --run-dir")
    for folder in taken:
        shutil.rmtree(folder)
    run_dir.mkdir(parents=True, exist_ok=True)


def _last_metrics(run: Path) -> dict:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):  # not written yet, or a line half written
        return {}


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _train_side_by_side(model_config: MemorizingTransformerConfig, runs: dict[str, TrainConfig], run_dir: Path,
                        steps: int) -> None:
    """Trains each run in its own process with one thread, printing their progress every few seconds."""
    children = {}
    for name, config in runs.items():
        folder = Path(config.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        (run_dir / f"{name}.model.json").write_text(model_config.to_json())
        (run_dir / f"{name}.train.json").write_text(json.dumps(config.to_dict(), indent=2))
        command = [sys.executable, "-m", "memorizing_transformers_pytorch", "train", "--threads", "1",
                   "--model-config", str(run_dir / f"{name}.model.json"),
                   "--train-config", str(run_dir / f"{name}.train.json")]
        log = open(run_dir / f"{name}.log", "w")
        env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
        children[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, folder)
    started = time.perf_counter()
    # SIGTERM (a job scheduler, `kill`) ends the children too: as SystemExit, through the `finally` below
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if threading.current_thread() is threading.main_thread() else None
    try:
        while any(child.poll() is None for child, _, _ in children.values()):
            for _ in range(30):  # a progress line every 30 s
                time.sleep(1)
                if all(child.poll() is not None for child, _, _ in children.values()):
                    break
            parts = []
            for name, (_, _, folder) in children.items():
                metrics = _last_metrics(folder)
                step = metrics.get("step", 0)
                bpb = f"{metrics['bits_per_byte']:.3f}" if "bits_per_byte" in metrics else "-"
                parts.append(f"{name} step {step}/{steps} bits/byte {bpb}")
            print(f"[demo] {time.perf_counter() - started:4.0f}s  " + " | ".join(parts), flush=True)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        for child, log, _ in children.values():
            if child.poll() is None:  # interrupted, or the other run failed
                child.terminate()
                child.wait()
            log.close()
    for name, (child, _, _) in children.items():
        if child.returncode != 0:
            tail = (run_dir / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"the {name} run failed (exit {child.returncode}); {run_dir / f'{name}.log'} ends:\n"
                               + "\n".join(tail))


def run_demo_training(model_config: MemorizingTransformerConfig, config: TrainConfig, *,
                      copy_warmup_steps: int) -> tuple[Path, Path]:
    """The copy warm-up, then the memory and baseline runs side by side; returns their run folders."""
    if copy_warmup_steps < 0:
        raise ValueError(f"--copy-warmup-steps must be >= 0, got {copy_warmup_steps}")
    if not model_config.memorizing_layers:
        raise ValueError("the demo compares memory on and off: the model needs a memorizing layer")
    run_dir = Path(config.run_dir)
    _prepare_folder(run_dir)
    (run_dir / "demo.json").write_text(json.dumps({"copy_warmup_steps": copy_warmup_steps,
                                                   "train": config.to_dict()}, indent=2) + "\n")
    init_from = config.init_from
    if copy_warmup_steps > 0:
        reads_bytes = source_tokenizer(config.data, config.tokenizer or None) is BYTES
        warmup = warmup_config(config, copy_warmup_steps, None if reads_bytes else model_config.num_tokens)
        print(f"[demo] copy warm-up: {copy_warmup_steps} steps -> {warmup.run_dir}", flush=True)
        train(model_config, warmup)
        init_from = warmup.run_dir
    runs = {name: dataclasses.replace(config, run_dir=str(run_dir / name), init_from=init_from,
                                      knn_memory=name == "memory")
            for name in ("memory", "baseline")}
    print(f"[demo] training the memory model and the baseline (memory off) side by side on {config.data!r}, "
          f"{config.steps} steps each; logs in {run_dir}/memory.log and baseline.log", flush=True)
    _train_side_by_side(model_config, runs, run_dir, config.steps)
    return run_dir / "memory", run_dir / "baseline"
