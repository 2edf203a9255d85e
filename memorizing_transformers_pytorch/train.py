"""Training: one explicit loop over document-stream segments, carrying kNN and XL memories.

AdamW with linear warmup and cosine decay, gradient clipping, optional gradient
accumulation over consecutive segments and bf16 autocast. Metrics are appended to
``RUN_DIR/metrics.jsonl``; checkpoints go to ``RUN_DIR/checkpoints`` (see
``checkpoint.py``) and ``resume=True`` continues a run exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (latest_checkpoint, load_checkpoint, memories_from_tensors, memories_to_tensors,
                         resolve_checkpoint, save_checkpoint)
from .config import SEARCH_FIELDS, MemorizingTransformerConfig
from .data import DocumentStream, load_documents
from .model import MemorizingTransformer

__all__ = ["TrainConfig", "train", "DEMO_MODEL"]

# The small byte-level model of the demo and of the benchmarks.
DEMO_MODEL = dict(
    num_tokens=256, dim=256, depth=4, heads=4, dim_head=64, memorizing_layers=(3,), max_knn_memories=16384,
    num_retrieved_memories=32, xl_max_memories=512, pad_id=0, clear_memories_on_sos_token_id=2,
)


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """How to train (the model's own hyperparameters live in ``MemorizingTransformerConfig``)."""

    data: str = field(default="stdlib", metadata=_help(
        "documents: 'stdlib' (this Python's standard library), a folder or glob of text files, enwik8:PATH, "
        "or the synthetic 'recall[:SPEC]' task (recall.py)"))
    run_dir: str = field(default="runs/demo", metadata=_help("where metrics and checkpoints are written"))
    seq_len: int = field(default=512, metadata=_help("tokens per segment"))
    batch_size: int = field(default=2, metadata=_help("document streams read in parallel"))
    steps: int = field(default=1000, metadata=_help("optimizer steps"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final learning rate as a fraction of the peak"))
    warmup_steps: int = field(default=100, metadata=_help("linear warmup steps"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (not on norms, biases, gates)"))
    grad_clip: float = field(default=1.0, metadata=_help("max gradient norm (0 = off)"))
    grad_accum: int = field(default=1, metadata=_help("consecutive segments per optimizer step"))
    bf16: bool = field(default=False, metadata=_help("bfloat16 autocast"))
    seed: int = field(default=0, metadata=_help("seed for weights and data order"))
    checkpoint_every: int = field(default=200, metadata=_help("steps between checkpoints (0 = only at the end)"))
    log_every: int = field(default=10, metadata=_help("steps between metric lines"))
    device: str = field(default="cpu", metadata=_help("torch device"))
    knn_memory: bool = field(default=True, metadata=_help(
        "train with the kNN memory; --no-knn-memory trains the same architecture with memory off (a fair baseline)"))
    max_minutes: float = field(default=0.0, metadata=_help(
        "stop (and checkpoint) after this much training time even before --steps (0 = no limit)"))
    copy_warmup_steps: int = field(default=0, metadata=_help(
        "first teach the model to copy by content for this many steps (recall.copy_warmup: 8 rows of 128 random "
        "bytes holding a string and its copy, loss on the copied bytes); not when resuming or with --init-from"))
    init_from: str = field(default="", metadata=_help(
        "start from the weights of this run folder or checkpoint (same model config, except that the memory "
        "size, k and index may differ); the optimizer, schedule and data start fresh. Ignored when resuming"))

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "copy_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        return cls(**data)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup to 1, then cosine decay to ``min_lr_ratio`` at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine


def _optimizer(model: MemorizingTransformer, config: TrainConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def train(
    model_config: MemorizingTransformerConfig,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Trains (or resumes) a run and returns a summary: final step, the losses, time, and the model
    and kNN memories it ended with.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains with
    ``DistributedDataParallel`` on its own rows of the global document stream
    (``batch_size`` rows per process; see ``distributed.py``); rank 0 alone writes
    metrics and checkpoints. A run resumes only with the world size that wrote it.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``.
        ValueError: resuming with a different model config or batch layout.
    """
    run_dir = Path(config.run_dir)
    device = distributed.setup(config.device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    torch.manual_seed(config.seed)
    model = MemorizingTransformer(model_config).to(device)
    if world > 1:  # same initial weights everywhere, different dropout masks per rank
        torch.manual_seed(config.seed + rank)
    # DDP averages gradients across ranks; without a memory the memorizing layers' gates get no gradient
    ddp_model = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, find_unused_parameters=not config.knn_memory)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    # one global stream; this rank reads its own rows of it (see distributed.py)
    stream = DocumentStream(load_documents(config.data, "train"), batch_size=config.batch_size * world,
                            seq_len=config.seq_len, repeat=True, seed=config.seed)
    rows = slice(rank * config.batch_size, (rank + 1) * config.batch_size)
    knn_memories = model.create_knn_memories(batch_size=config.batch_size) if config.knn_memory else None
    xl_memories = None
    step = 0

    if config.init_from and not resume:
        source = resolve_checkpoint(config.init_from)
        if not MemorizingTransformerConfig.from_json(source / "config.json").same_model(model_config):
            raise ValueError(f"--init-from: the model config differs from the one in {source} (beyond the memory "
                             f"search's settings: {', '.join(SEARCH_FIELDS)})")
        model.load_state_dict(_load_weights(source, device))
    elif config.copy_warmup_steps and not resume:
        from .recall import copy_warmup

        copy_warmup(model, config.copy_warmup_steps, seed=config.seed, progress=progress and main)

    if resume:
        checkpoint_dir = latest_checkpoint(run_dir)
        if checkpoint_dir is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
        checkpoint = load_checkpoint(checkpoint_dir)
        saved = MemorizingTransformerConfig.from_json(checkpoint_dir / "config.json")
        if saved != model_config:
            raise ValueError(f"--resume: the model config differs from the checkpoint's ({checkpoint_dir})")
        saved_world = checkpoint["state"].get("world_size", 1)
        if saved_world != world:
            raise ValueError(
                f"--resume: the checkpoint was written by {saved_world} process(es), this run has {world}; "
                "each process owns its document streams and memories, so resume with the same world size")
        model.load_state_dict(_load_weights(checkpoint_dir, device))
        trainer = checkpoint["trainer_state"]
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        torch.set_rng_state(trainer["rng"][rank] if isinstance(trainer["rng"], list) else trainer["rng"])
        stream.load_state_dict(checkpoint["state"]["data"])
        saved_memories = {k: v[rows].to(device) for k, v in checkpoint.get("memories", {}).items()}
        xl_memories = memories_from_tensors(saved_memories, knn_memories)
        step = checkpoint["state"]["step"]

    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and metrics_path.exists():
            metrics_path.unlink()
    model.train()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
    tokens_per_step = config.batch_size * world * config.seq_len * config.grad_accum
    bar = tqdm(total=config.steps, initial=step, disable=not (progress and main), unit="step", dynamic_ncols=True)
    started = time.perf_counter()
    window_start, window_tokens, window_loss, window_count = started, 0, 0.0, 0
    losses: list[float] = []

    def checkpoint_now() -> None:
        # rank 0 writes one checkpoint holding every rank's memories (in global row order) and RNG state
        memories = {k: v.cpu() for k, v in memories_to_tensors(knn_memories, xl_memories).items()}
        gathered = distributed.gather_objects((memories, torch.get_rng_state()))
        if gathered is not None:
            save_checkpoint(
                run_dir, step, model,
                state={"data": stream.state_dict(), "world_size": world},
                train_config=config.to_dict(),
                trainer_state={"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                               "rng": [rng for _, rng in gathered]},
                memories={k: torch.cat([m[k] for m, _ in gathered]) for k in memories},
            )
        distributed.barrier()

    while step < config.steps:
        step_loss = 0.0
        for micro in range(config.grad_accum):
            batch = stream.next_batch()
            # gradients are averaged across ranks once per optimizer step, on the last micro-batch
            sync = contextlib.nullcontext() if micro == config.grad_accum - 1 or world == 1 else ddp_model.no_sync()
            with sync:
                with autocast:
                    loss, xl_memories = ddp_model(batch.tokens[rows].to(device), knn_memories=knn_memories,
                                                  xl_memories=xl_memories, labels=batch.labels[rows].to(device))
                (loss / config.grad_accum).backward()
            step_loss += loss.item() / config.grad_accum
        step_loss = distributed.mean(step_loss, device)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(step_loss)
        window_tokens += tokens_per_step
        window_loss += step_loss
        window_count += 1
        bar.update(1)
        if step % config.log_every == 0 or step == config.steps:
            now = time.perf_counter()
            mean_loss = window_loss / window_count
            record = {
                "step": step, "loss": mean_loss, "bits_per_byte": mean_loss / math.log(2),
                "lr": scheduler.get_last_lr()[0], "tokens_per_s": window_tokens / (now - window_start),
                "elapsed_s": now - started, "documents_started": stream.documents_started,
            }
            if main:
                with open(metrics_path, "a") as file:
                    file.write(json.dumps(record) + "\n")
            bar.set_postfix(loss=f"{mean_loss:.3f}", bpb=f"{record['bits_per_byte']:.3f}",
                            tok_s=f"{record['tokens_per_s']:.0f}")
            window_start, window_tokens, window_loss, window_count = now, 0, 0.0, 0
        out_of_time = config.max_minutes > 0 and time.perf_counter() - started > 60 * config.max_minutes
        if config.max_minutes > 0 and world > 1:  # every rank stops at the same step
            out_of_time = distributed.sum_values([float(out_of_time)], device)[0] > 0
        if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps or out_of_time:
            checkpoint_now()
        if out_of_time:
            break
    bar.close()
    elapsed = time.perf_counter() - started
    return {"step": step, "losses": losses, "elapsed_s": elapsed, "run_dir": str(run_dir), "world_size": world,
            "model": model, "knn_memories": knn_memories}


def _load_weights(checkpoint_dir: Path, device: torch.device) -> dict:
    from safetensors.torch import load_file

    return load_file(checkpoint_dir / "model.safetensors", device=str(device))
