"""Training: one explicit loop over document-stream segments, carrying kNN and XL memories.

AdamW with linear warmup and cosine decay, gradient clipping, optional gradient
accumulation over consecutive segments and bf16 autocast. Metrics are appended to
``RUN_DIR/metrics.jsonl``; checkpoints go to ``RUN_DIR/checkpoints`` (see
``checkpoint.py``) and ``resume=True`` continues a run exactly where it stopped.

``Trainer`` holds a run's state and has one method per phase: set-up (``__init__``), ``init_from`` /
``restore``, ``step`` and ``save``; ``run`` is the loop with logging, and ``train`` the whole thing.
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
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import (
    CheckpointError,
    abort_checkpoint,
    commit_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    load_config,
    load_shard,
    load_state_dict_into,
    load_trainer_state,
    load_weights,
    memories_from_tensors,
    memories_to_tensors,
    prepare_checkpoint,
    resolve_checkpoint,
    temporary_folder,
    write_shard,
)
from .config import SEARCH_FIELDS, MemorizingTransformerConfig
from .data import IGNORE_INDEX, open_stream, source_tokenizer
from .model import MemorizingTransformer
from .tokenizer import BYTES, HuggingFaceTokenizer, check_model_fits

__all__ = ["TrainConfig", "Trainer", "train", "learning_rate_factor"]


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainConfig:
    """How to train (the model's own hyperparameters live in ``MemorizingTransformerConfig``)."""

    data: str = field(default="stdlib", metadata=_help(
        "documents: 'stdlib' (this Python's standard library), a folder or glob of text files, enwik8:PATH, "
        "jsonl:PATH[#FIELD], parquet:PATH[#FIELD], hf:DIR[#FIELD] (a saved Hugging Face dataset), shards:DIR (token "
        "shards from `prepare`), or a source registered by other code (data.register_source; e.g. 'recall' and "
        "'copy' under python -m experiments)"))
    tokenizer: str = field(default="", metadata=_help(
        "a tokenizer.json (or a folder holding one) to train at token level: it sets num_tokens and the padding and "
        "document-start ids, and is stored in each checkpoint. Empty: bytes, or the tokenizer of shards:DIR"))
    run_dir: str = field(default="runs/demo", metadata=_help("where metrics and checkpoints are written"))
    seq_len: int = field(default=512, metadata=_help("tokens per segment"))
    batch_size: int = field(default=2, metadata=_help("document streams read in parallel"))
    steps: int = field(default=1000, metadata=_help("optimizer steps"))
    lr: float = field(default=1e-3, metadata=_help("peak learning rate"))
    min_lr_ratio: float = field(default=0.1, metadata=_help("final learning rate as a fraction of the peak"))
    warmup_steps: int = field(default=100, metadata=_help("linear warmup steps"))
    weight_decay: float = field(default=0.1, metadata=_help("AdamW weight decay (not on norms, biases, gates)"))
    adam_beta2: float = field(default=0.95, metadata=_help("AdamW's second-moment decay (0.999 is torch's default)"))
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
    init_from: str = field(default="", metadata=_help(
        "start from the weights of this run folder or checkpoint (same model config, except that the memory "
        "size, k and index may differ), e.g. a copy warm-up run; the optimizer, schedule and data start fresh. "
        "Ignored when resuming"))

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "steps", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.adam_beta2 < 1:
            raise ValueError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}")
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


class Trainer:
    """One training run: the model, optimizer, data stream and memories of this process.

    Under ``torchrun`` (``WORLD_SIZE > 1``) each process trains with ``DistributedDataParallel`` on its own
    rows of the global document stream (``batch_size`` rows per process; see ``distributed.py``); rank 0
    alone writes metrics and checkpoints. A run resumes only with the world size that wrote it.
    """

    def __init__(self, model_config: MemorizingTransformerConfig, config: TrainConfig, *, progress: bool = True,
                 model: torch.nn.Module | None = None) -> None:
        """``model``: train this model instead of a new ``MemorizingTransformer(model_config)``; it must take the
        same ``forward`` arguments and have ``create_knn_memories`` and a ``config`` (with ``to_json`` and
        ``from_dict``; ``model_config`` is then ``model.config``), e.g. a Hugging Face model with a kNN memory
        (``hf.MemorizingHFModel``). Only its parameters with ``requires_grad`` are trained."""
        if model is not None:
            model_config = model.config
        self.model_config, self.config = model_config, config
        self.run_dir = Path(config.run_dir)
        self.device = distributed.setup(config.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.progress = progress and self.rank == 0
        torch.manual_seed(config.seed)
        self.model = (MemorizingTransformer(model_config) if model is None else model).to(self.device)
        if self.world > 1:  # same initial weights everywhere, different dropout masks per rank
            torch.manual_seed(config.seed + self.rank)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: learning_rate_factor(step, config))
        self.tokenizer = source_tokenizer(config.data, config.tokenizer)
        if self.tokenizer is not BYTES:
            check_model_fits(self.tokenizer, model_config, f"training on {config.data!r}",
                             num_tokens=getattr(self.model, "num_tokens", None))
        # one global stream; this rank reads its own rows of it (see distributed.py)
        self.stream = open_stream(config.data, "train", batch_size=config.batch_size * self.world,
                                  seq_len=config.seq_len, repeat=True, seed=config.seed, tokenizer=self.tokenizer)
        self.scored_tokens = self.scored_bytes = 0  # since the last metric line (token-level bits per byte)
        self.rows = slice(self.rank * config.batch_size, (self.rank + 1) * config.batch_size)
        self.knn_memories = self.model.create_knn_memories(batch_size=config.batch_size) if config.knn_memory else None
        self.xl_memories = None
        self.step_count = 0
        self._ddp: torch.nn.Module | None = None

    def _optimizer(self) -> torch.optim.AdamW:
        trained = [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]
        # matrices decay; norms, biases, the memory gates and the temperatures (shape (H, 1, 1)) do not
        decays = [p.ndim >= 2 and ".gate." not in name and not name.endswith("log_scale") for name, p in trained]
        decay = [p for (_, p), d in zip(trained, decays) if d]
        no_decay = [p for (_, p), d in zip(trained, decays) if not d]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, self.config.adam_beta2))

    @property
    def ddp_model(self) -> torch.nn.Module:
        """The model wrapped for DDP (built on first use, after any weights were loaded), or the model itself."""
        if self.world == 1:
            return self.model
        if self._ddp is None:
            # without a memory the memorizing layers' gates get no gradient
            self._ddp = torch.nn.parallel.DistributedDataParallel(self.model,
                                                                  find_unused_parameters=not self.config.knn_memory)
        return self._ddp

    # ------------------------------------------------------------------------------------------ restore
    def init_from(self, path: str | Path) -> None:
        """Starts from the weights of another run or checkpoint (same model up to the memory search's settings).

        Raises:
            FileNotFoundError: no checkpoint there. ValueError: another model.
        """
        source = resolve_checkpoint(path)
        if not load_config(source, type(self.model_config)).same_model(self.model_config):
            raise ValueError(f"--init-from: the model config differs from {source / 'config.json'} (beyond the "
                             f"memory search's settings: {', '.join(SEARCH_FIELDS)})")
        load_state_dict_into(self.model, load_weights(source, self.device), source)

    def restore(self) -> None:
        """Continues from the run folder's latest checkpoint: weights, optimizer, schedule, RNG, data, memories.

        Raises:
            FileNotFoundError: no checkpoint in the run folder.
            ValueError: another model config or world size.
        """
        checkpoint_dir = latest_checkpoint(self.run_dir)
        if checkpoint_dir is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir / 'checkpoints'}")
        checkpoint = load_checkpoint(checkpoint_dir)
        if load_config(checkpoint_dir, type(self.model_config)) != self.model_config:
            raise ValueError(f"--resume: the model config differs from the checkpoint's ({checkpoint_dir / 'config.json'})")
        saved_world = checkpoint["state"].get("world_size", 1)
        if saved_world != self.world:
            raise ValueError(
                f"--resume: the checkpoint was written by {saved_world} process(es), this run has {self.world}; "
                "each process owns its document streams and memories, so resume with the same world size")
        if "data" not in checkpoint["state"]:
            raise CheckpointError(f"{checkpoint_dir / 'state.json'}: no data position (not a training checkpoint; "
                                  "--init-from starts from its weights)")
        trainer = load_trainer_state(checkpoint_dir)
        shard = load_shard(checkpoint_dir, self.rank)
        load_state_dict_into(self.model, load_weights(checkpoint_dir, self.device), checkpoint_dir)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        torch.set_rng_state(shard.pop("rng"))
        cuda_rng = shard.pop("cuda_rng", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.stream.load_state_dict(checkpoint["state"]["data"])
        self.xl_memories = memories_from_tensors({k: v.to(self.device) for k, v in shard.items()}, self.knn_memories)
        self.step_count = checkpoint["state"]["step"]

    # --------------------------------------------------------------------------------------------- step
    def step(self) -> Tensor:
        """One optimizer step over ``grad_accum`` consecutive segments; returns this rank's loss, on the device
        (reading it is a host sync: do it only when logging)."""
        config, device = self.config, self.device
        step_loss = torch.zeros((), device=device)
        for micro in range(config.grad_accum):
            batch = self.stream.next_batch()
            self._count_scored(batch.labels[self.rows])
            if batch.new_streams:  # rows start afresh: nothing carried over from the previous batch
                self.xl_memories = None
                if self.knn_memories is not None:
                    self.knn_memories.clear_memory()
            # gradients are averaged across ranks once per optimizer step, on the last micro-batch
            last = micro == config.grad_accum - 1
            sync = self.ddp_model.no_sync() if self.world > 1 and not last else contextlib.nullcontext()
            with sync:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                    loss, self.xl_memories = self.ddp_model(
                        batch.tokens[self.rows].to(device), knn_memories=self.knn_memories,
                        xl_memories=self.xl_memories, labels=batch.labels[self.rows].to(device))
                (loss / config.grad_accum).backward()
            step_loss += loss.detach() / config.grad_accum
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        return step_loss

    def _count_scored(self, labels: Tensor) -> None:
        if self.tokenizer.token_bytes is not None:
            scored = labels[labels != IGNORE_INDEX]
            self.scored_tokens += len(scored)
            self.scored_bytes += int(self.tokenizer.token_bytes[scored.numpy()].sum())

    def _bytes_per_token(self) -> float:
        """Bytes of text per scored token since the last call (1 for bytes)."""
        ratio = self.scored_bytes / self.scored_tokens if self.scored_tokens and self.scored_bytes else 1.0
        self.scored_tokens = self.scored_bytes = 0
        return ratio

    # --------------------------------------------------------------------------------------- checkpoint
    def save(self) -> None:
        """Writes a checkpoint: each rank its own memory shard (memories, XL caches, RNG state), rank 0 the
        weights, optimizer and data position; rank 0 commits ``latest`` last.

        Every phase ends with a vote: if any rank failed, all ranks raise (the temporary folder is removed and
        the previous checkpoint stays), instead of the others waiting in a collective until a timeout.
        """
        main = self.rank == 0
        tmp = temporary_folder(self.run_dir, self.step_count)
        self._on_all_ranks(lambda: prepare_checkpoint(tmp) if main else None, "preparing the checkpoint folder")
        try:
            shard = memories_to_tensors(self.knn_memories, self.xl_memories)
            shard["rng"] = torch.get_rng_state()
            if self.device.type == "cuda":
                shard["cuda_rng"] = torch.cuda.get_rng_state(self.device)
            self._on_all_ranks(lambda: write_shard(tmp, self.rank, shard), "writing its memory shard")
            self._on_all_ranks(lambda: commit_checkpoint(
                tmp, self.step_count, self.model, state={"data": self.stream.state_dict(), "world_size": self.world},
                train_config=self.config.to_dict(),
                trainer_state={"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()},
                files=self.tokenizer.files() if isinstance(self.tokenizer, HuggingFaceTokenizer) else None,
            ) if main else None, "committing the checkpoint")
        except BaseException:
            if main:
                abort_checkpoint(tmp)
            raise

    def _on_all_ranks(self, action: Any, what: str) -> Any:
        """Runs ``action`` here, then lets every rank know whether every rank succeeded; raises if one did not."""
        error: BaseException | None = None
        result = None
        try:
            result = action()
        except Exception as caught:
            error = caught
        if not distributed.all_succeeded(error is None, self.device):
            if error is not None:
                raise error
            raise RuntimeError(f"another process failed while {what} (see its error); this one stops too")
        return result

    # ---------------------------------------------------------------------------------------------- run
    def run(self, *, fresh_metrics: bool = True) -> dict[str, Any]:
        """Trains to ``steps`` (or ``max_minutes``), logging every ``log_every`` steps and checkpointing every
        ``checkpoint_every``; returns a summary: final step, the per-step losses (mean over ranks), time, and
        the model and kNN memories it ended with."""
        config, main = self.config, self.rank == 0
        metrics_path = self.run_dir / "metrics.jsonl"
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if fresh_metrics and metrics_path.exists():
                metrics_path.unlink()
        self.model.train()
        tokens_per_step = config.batch_size * self.world * config.seq_len * config.grad_accum
        bar = tqdm(total=config.steps, initial=self.step_count, disable=None if self.progress else True, unit="step",
                   dynamic_ncols=True)
        started = time.perf_counter()
        window_start = started
        window: list[Tensor] = []  # this rank's losses since the last log line, on the device
        losses: list[float] = []
        while self.step_count < config.steps:
            window.append(self.step())
            bar.update(1)
            out_of_time = config.max_minutes > 0 and time.perf_counter() - started > 60 * config.max_minutes
            if config.max_minutes > 0 and self.world > 1:  # every rank stops at the same step
                out_of_time = distributed.sum_values([float(out_of_time)], self.device)[0] > 0
            step = self.step_count
            if step % config.log_every == 0 or step == config.steps or out_of_time:
                now = time.perf_counter()
                window_losses = [v / self.world for v in distributed.sum_values(torch.stack(window).tolist(), self.device)]
                losses.extend(window_losses)
                mean_loss = sum(window_losses) / len(window_losses)
                bytes_per_token = self._bytes_per_token()
                record = {
                    "step": step, "loss": mean_loss, "bits_per_byte": mean_loss / math.log(2) / bytes_per_token,
                    "lr": self.scheduler.get_last_lr()[0],
                    "tokens_per_s": tokens_per_step * len(window) / (now - window_start),
                    "elapsed_s": now - started, "documents_started": self.stream.documents_started,
                }
                if self.tokenizer is not BYTES:
                    record["bytes_per_token"] = bytes_per_token
                if main:
                    with open(metrics_path, "a") as file:
                        file.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{mean_loss:.3f}", bpb=f"{record['bits_per_byte']:.3f}",
                                tok_s=f"{record['tokens_per_s']:.0f}")
                window_start, window = now, []
            if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps or out_of_time:
                self.save()
            if out_of_time:
                break
        bar.close()
        return {"step": self.step_count, "losses": losses, "elapsed_s": time.perf_counter() - started,
                "run_dir": str(self.run_dir), "world_size": self.world, "model": self.model,
                "knn_memories": self.knn_memories}


def train(
    model_config: MemorizingTransformerConfig,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a run and returns ``Trainer.run``'s summary (``model``: see ``Trainer``).

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``, or ``init_from`` without one.
        ValueError: resuming with a different model config or batch layout; ``init_from`` another model.
    """
    trainer = Trainer(model_config, config, progress=progress, model=model)
    if resume:
        trainer.restore()
    elif config.init_from:
        trainer.init_from(config.init_from)
    return trainer.run(fresh_metrics=not resume)
