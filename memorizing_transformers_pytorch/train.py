"""Training: one explicit loop over document-stream segments, carrying kNN and XL memories.

AdamW with linear warmup and cosine decay, gradient clipping, optional gradient
accumulation over consecutive segments and bf16 autocast. Batches are read ahead in a
background thread (``data.PrefetchedStream``). Metrics (loss, learning rate, gradient norm,
tokens/s, and every ``eval_every`` steps the loss on held-out documents) are appended to
``RUN_DIR/metrics.jsonl``, and with ``tensorboard=True`` written as TensorBoard events to
``RUN_DIR/tensorboard``; checkpoints go to ``RUN_DIR/checkpoints`` (see ``checkpoint.py``)
and ``resume=True`` continues a run exactly where it stopped.

``Trainer`` holds a run's state and has one method per phase: set-up (``__init__``), ``init_from`` /
``restore``, ``step`` and ``save``; ``run`` is the loop with logging, and ``train`` the whole thing.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
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
from .config import MemorizingTransformerConfig
from .data import IGNORE_INDEX, PrefetchedStream, load_documents, open_stream, source_tokenizer
from .evaluate import score
from .model import MemorizingTransformer
from .run_folder import TENSORBOARD, append_metrics, claim_run_folder, truncate_metrics
from .tokenizer import BYTES, HuggingFaceTokenizer, check_model_fits
from .train_config import RESUMABLE_CHANGES, TrainConfig

__all__ = ["TrainConfig", "Trainer", "train", "learning_rate_factor", "TrainingDiverged", "Interrupted",
           "RESUMABLE_CHANGES"]


SCALARS = {"loss": "train/loss", "bits_per_byte": "train/bits_per_byte", "lr": "train/lr",
           "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s", "val_loss": "val/loss",
           "val_bpb": "val/bits_per_byte"}


def _summary_writer() -> type:
    """torch's TensorBoard ``SummaryWriter`` class, imported only when asked for.

    Raises:
        ValueError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class TrainingDiverged(ValueError):
    """The loss or gradient stayed non-finite for ``max_bad_steps`` steps; the message says what to do."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped training at a step boundary, after a checkpoint was written."""

    def __init__(self, signal_name: str, step: int, run_dir: Path) -> None:
        super().__init__(f"{signal_name} at step {step}")
        self.signal_name, self.step, self.run_dir = signal_name, step, run_dir


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
        if getattr(model_config, "attention_kernel", "sdpa") == "flex" and self.device.type == "cpu":
            raise ValueError("--attention-kernel flex cannot train on CPU: torch's flex attention has no backward "
                             "there; train with sdpa (the weights are the same) and use flex for eval or generate")
        self.model = (MemorizingTransformer(model_config) if model is None else model).to(self.device)
        if config.compile:
            if not hasattr(self.model, "compile_layers"):
                raise ValueError(f"--compile: {type(self.model).__name__} has no compile_layers (only "
                                 "MemorizingTransformer compiles)")
            self.model.compile_layers()
        if self.world > 1:  # same initial weights everywhere, different dropout masks per rank
            torch.manual_seed(config.seed + self.rank)
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: learning_rate_factor(step, config))
        self.tokenizer = source_tokenizer(config.data, config.tokenizer)
        if self.tokenizer is not BYTES:
            check_model_fits(self.tokenizer, model_config, f"training on {config.data!r}",
                             num_tokens=getattr(self.model, "num_tokens", None))
        # one global stream, read ahead in a thread; this rank reads its own rows of it (see distributed.py)
        self.stream = PrefetchedStream(open_stream(config.data, "train", batch_size=config.batch_size * self.world,
                                                   seq_len=config.seq_len, repeat=True, seed=config.seed,
                                                   tokenizer=self.tokenizer))
        self.eval_documents = self._held_out_documents() if config.eval_every else []
        self.summary_writer = _summary_writer() if config.tensorboard and self.rank == 0 else None
        self.scored_tokens = self.scored_bytes = 0  # since the last metric line (token-level bits per byte)
        self.rows = slice(self.rank * config.batch_size, (self.rank + 1) * config.batch_size)
        self.knn_memories = self.model.create_knn_memories(batch_size=config.batch_size) if config.knn_memory else None
        self.xl_memories = None
        self.step_count = 0
        self.grad_norm: Tensor | None = None  # of the last step, before clipping, on the device
        self.bad_steps = 0  # steps in a row with a non-finite loss or gradient
        self.stop_signal: str | None = None
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
                             f"memory search's settings: {', '.join(self.model_config.search_fields)})")
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
        step = checkpoint["state"].get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise CheckpointError(f"{checkpoint_dir / 'state.json'}: 'step' must be an integer >= 0, got {step!r}")
        if not isinstance(checkpoint["state"]["data"], dict):
            raise CheckpointError(f"{checkpoint_dir / 'state.json'}: 'data' must be an object")
        trainer = load_trainer_state(checkpoint_dir)
        if not isinstance(trainer, dict) or not {"optimizer", "scheduler"} <= set(trainer):
            raise CheckpointError(f"{checkpoint_dir / 'trainer.pt'}: no optimizer and scheduler state in it")
        moments = [value for state in dict(trainer["optimizer"]).get("state", {}).values() for value in state.values()
                   if isinstance(value, Tensor) and value.is_floating_point()]
        if not all(bool(torch.isfinite(value).all()) for value in moments):
            raise CheckpointError(f"{checkpoint_dir / 'trainer.pt'}: the optimizer state holds NaN or infinite "
                                  f"values (damaged, or a diverged run): resume from an earlier checkpoint")
        shard = load_shard(checkpoint_dir, self.rank)
        load_state_dict_into(self.model, load_weights(checkpoint_dir, self.device), checkpoint_dir)
        try:
            self.optimizer.load_state_dict(trainer["optimizer"])
            self.scheduler.load_state_dict(trainer["scheduler"])
            torch.set_rng_state(shard.pop("rng"))
        except (KeyError, ValueError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"{checkpoint_dir}: its optimizer, schedule or RNG state does not fit this run "
                                  f"({' '.join(str(error).split())[:160]})") from None
        try:
            self.stream.load_state_dict(checkpoint["state"]["data"])
        except (KeyError, ValueError, TypeError, IndexError) as error:
            raise CheckpointError(f"{checkpoint_dir / 'state.json'}: its data position does not fit the data "
                                  f"{self.config.data!r} ({' '.join(str(error).split())[:160]}); resume with the "
                                  f"run's own data") from None
        cuda_rng = shard.pop("cuda_rng", None)
        if cuda_rng is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(cuda_rng, self.device)
        self.xl_memories = memories_from_tensors({k: v.to(self.device) for k, v in shard.items()}, self.knn_memories)
        self.step_count = step

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
        trained = [p for p in self.model.parameters() if p.requires_grad]
        # the norm is of the gradients averaged over ranks, so every rank takes the same decision
        norm = torch.nn.utils.clip_grad_norm_(trained, config.grad_clip if config.grad_clip > 0 else math.inf)
        self.grad_norm = norm.detach()
        finite = bool(torch.isfinite(norm)) and (self.world > 1 or bool(torch.isfinite(step_loss)))
        if finite:
            self.optimizer.step()
            self.bad_steps = 0
        else:  # no update; the memories may hold what the bad forward wrote: start them afresh
            self.bad_steps += 1
            self.xl_memories = None
            if self.knn_memories is not None:
                self.knn_memories.clear_memory()
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

    # --------------------------------------------------------------------------------------- validation
    def _held_out_documents(self) -> list[np.ndarray]:
        """The first ``eval_tokens`` tokens of the data's valid split (else its test split), whole documents in
        order, the last one cut.

        Raises:
            ValueError: the data has neither split, or makes its own batches (no documents).
        """
        errors = []
        for split in ("valid", "test"):
            try:
                documents = load_documents(self.config.data, split, self.tokenizer, progress=self.progress)
            except ValueError as error:
                errors.append(str(error))
                continue
            chosen, left = [], self.config.eval_tokens
            for document in documents:
                if left <= 0:
                    break
                chosen.append(document[:left])
                left -= len(chosen[-1])
            return chosen
        raise ValueError(f"--eval-every: no held-out documents to validate on ({errors[-1]}); train with --eval-every 0")

    def validate(self) -> dict[str, float]:
        """The loss on the held-out documents, read as streams of ``batch_size`` rows with fresh kNN memories
        (memory on, as the run trains; off for a run with ``knn_memory=False``), in eval mode. Train mode and the
        RNG state are restored afterwards, so training goes on exactly as without it. Every rank must call it
        (each reads its share of the documents). The loss is per scored token (document-start ids are not
        scored), ``val_bpb`` its bits per byte of text."""
        started = time.perf_counter()
        training = self.model.training
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.bf16):
            try:
                result = score(self.model, self.eval_documents, memory_size=None if self.config.knn_memory else 0,
                               tokenizer=self.tokenizer, batch_size=self.config.batch_size, seq_len=self.config.seq_len,
                               device=self.device)
            finally:
                self.model.train(training)
        return {"val_loss": result.bits * math.log(2) / max(1, result.tokens), "val_bpb": result.bits_per_byte,
                "val_tokens": result.tokens, "val_s": time.perf_counter() - started}

    # --------------------------------------------------------------------------------------- checkpoint
    def save(self) -> None:
        """Writes a checkpoint: each rank its own memory shard (memories, XL caches, RNG state), rank 0 the
        weights, optimizer and data position; rank 0 commits ``latest`` last.

        Every phase ends with a vote: if any rank failed, all ranks raise (the temporary folder is removed and
        the previous checkpoint stays), instead of the others waiting in a collective until a timeout.
        """
        main = self.rank == 0
        for name, parameter in self.model.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                raise TrainingDiverged(f"not saving step {self.step_count}: the weight {name} holds NaN or infinite "
                                       f"values (the last checkpoint is kept)")
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
                keep=self.config.keep_checkpoints, files=self.tokenizer.files() if isinstance(self.tokenizer, HuggingFaceTokenizer) else None,
            ) if main else None, "committing the checkpoint")
        except BaseException as error:
            if main:
                abort_checkpoint(tmp)
            if isinstance(error, (OSError, SafetensorError)):  # disk full, read-only: one line, naming the folder
                reason = getattr(error, "strerror", None) or " ".join(str(error).split())[:160]
                raise OSError(f"could not write the checkpoint of step {self.step_count} into {tmp.parent} "
                              f"({reason}); the previous checkpoint is kept: free space or fix permissions, then "
                              f"--resume") from None
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
    def run(self) -> dict[str, Any]:
        """Trains to ``steps`` (or ``max_minutes``), logging every ``log_every`` steps, validating every
        ``eval_every`` (and at the last step) and checkpointing every ``checkpoint_every``; returns a summary:
        final step, the per-step losses (mean over ranks), the validations, time, and the model and kNN memories
        it ended with. The thread reading batches ahead stops when it returns or raises.

        SIGINT and SIGTERM stop it at the next step boundary with a checkpoint (``Interrupted``); ``max_bad_steps``
        non-finite steps in a row stop it without one (``TrainingDiverged``).

        Raises:
            Interrupted: after the checkpoint of the step it stopped at. TrainingDiverged: see above.
        """
        config, main = self.config, self.rank == 0
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # a resumed run's events replace those a killed run wrote past its checkpoint (TensorBoard drops them)
        writer = None if self.summary_writer is None else self.summary_writer(str(self.run_dir / TENSORBOARD),
                                                                              purge_step=self.step_count + 1)
        self.model.train()
        tokens_per_step = config.batch_size * self.world * config.seq_len * config.grad_accum
        bar = tqdm(total=config.steps, initial=self.step_count, disable=None if self.progress else True, unit="step",
                   dynamic_ncols=True)
        quiet_bar = bar.disable and self.progress and config.progress_every > 0  # stderr is not a terminal
        started = time.perf_counter()
        window_start = last_progress = started
        first_step = self.step_count
        window: list[Tensor] = []  # this rank's losses since the last log line, on the device
        norms: list[Tensor] = []  # and the gradient norms (the same on every rank)
        losses: list[float] = []
        record: dict[str, Any] = {}
        validations: list[dict[str, Any]] = []
        try:
            with self._stop_on_signals():
                while self.step_count < config.steps:
                    window.append(self.step())
                    norms.append(self.grad_norm)
                    bar.update(1)
                    step = self.step_count
                    if self.bad_steps:
                        self._report_bad_step(float(window[-1]))
                    out_of_time = config.max_minutes > 0 and time.perf_counter() - started > 60 * config.max_minutes
                    if config.max_minutes > 0 and self.world > 1:  # every rank stops at the same step
                        out_of_time = distributed.sum_values([float(out_of_time)], self.device)[0] > 0
                    stopping = self._stop_requested()
                    if step % config.log_every == 0 or step == config.steps or out_of_time or stopping:
                        now = time.perf_counter()
                        window_losses = [v / self.world
                                         for v in distributed.sum_values(torch.stack(window).tolist(), self.device)]
                        losses.extend(window_losses)
                        mean_loss = sum(window_losses) / len(window_losses)
                        bytes_per_token = self._bytes_per_token()
                        record = {
                            "step": step, "loss": mean_loss, "bits_per_byte": mean_loss / math.log(2) / bytes_per_token,
                            "lr": self.scheduler.get_last_lr()[0], "grad_norm": float(torch.stack(norms).mean()),
                            "tokens_per_s": tokens_per_step * len(window) / (now - window_start),
                            "elapsed_s": now - started, "documents_started": self.stream.documents_started,
                        }
                        if self.tokenizer is not BYTES:
                            record["bytes_per_token"] = bytes_per_token
                        self._log(record, writer)
                        window_start, window, norms = now, [], []
                    if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                        validations.append({"step": step, **self.validate()})
                        self._log(validations[-1], writer)
                        window_start += validations[-1]["val_s"]  # tokens/s counts training time only
                    if record:
                        bar.set_postfix(loss=f"{record['loss']:.3f}", bpb=f"{record['bits_per_byte']:.3f}",
                                        gnorm=f"{record['grad_norm']:.3g}", tok_s=f"{record['tokens_per_s']:.0f}",
                                        **({"val": f"{validations[-1]['val_loss']:.3f}"} if validations else {}))
                    if quiet_bar and record and time.perf_counter() - last_progress >= config.progress_every:
                        last_progress = time.perf_counter()
                        self._print_progress(record, validations[-1] if validations else None, first_step,
                                             last_progress - started)
                    if (config.checkpoint_every and step % config.checkpoint_every == 0) or step == config.steps \
                            or out_of_time or stopping:
                        self.save()
                        if writer is not None:
                            writer.flush()
                    if stopping:
                        raise Interrupted(self.stop_signal or "a signal", step, self.run_dir)
                    if out_of_time:
                        break
        finally:
            self.stream.close()
            if writer is not None:
                writer.close()
        bar.close()
        return {"step": self.step_count, "losses": losses, "validations": validations,
                "elapsed_s": time.perf_counter() - started, "run_dir": str(self.run_dir), "world_size": self.world,
                "model": self.model, "knn_memories": self.knn_memories}

    def _log(self, record: dict[str, Any], writer: Any) -> None:
        """Appends a metrics record (rank 0), and writes its values as TensorBoard scalars when ``writer``."""
        if self.rank != 0:
            return
        append_metrics(self.run_dir, record)
        if writer is not None:
            for key, tag in SCALARS.items():
                if key in record:
                    writer.add_scalar(tag, record[key], record["step"])

    def _report_bad_step(self, loss: float) -> None:
        config = self.config
        if self.rank == 0:
            print(f"step {self.step_count}: the loss ({loss:.4g}) or gradient is not finite; update skipped "
                  f"({self.bad_steps} in a row, the run stops at {config.max_bad_steps})", file=sys.stderr, flush=True)
        if self.bad_steps >= config.max_bad_steps:
            latest = latest_checkpoint(self.run_dir)
            kept = f"the last checkpoint, {latest}, is from before" if latest else "no checkpoint was written"
            raise TrainingDiverged(
                f"training diverged: the loss or gradient was not finite for {self.bad_steps} steps in a row "
                f"(to step {self.step_count}); {kept}. Lower --lr (now {config.lr:g}) or raise --warmup-steps "
                f"or --grad-clip, then train again (--resume continues from the last checkpoint)")

    def _print_progress(self, record: dict[str, Any], validation: dict[str, Any] | None, first_step: int,
                        elapsed: float) -> None:
        config, step = self.config, self.step_count
        rate = (step - first_step) / max(elapsed, 1e-9)
        left = (config.steps - step) / rate / 60 if rate > 0 else float("inf")
        validated = "" if validation is None else (f"; validation at step {validation['step']}: loss "
                                                   f"{validation['val_loss']:.4f}, {validation['val_bpb']:.4f} bits per byte")
        print(f"step {step}/{config.steps} ({100 * step / config.steps:.0f}%): loss {record['loss']:.4f}, "
              f"{record['bits_per_byte']:.4f} bits per byte, gradient norm {record['grad_norm']:.3g}, "
              f"{record['tokens_per_s']:.0f} tokens/s{validated}; {elapsed / 60:.1f} min elapsed, about {left:.1f} min "
              f"left", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """While training, SIGINT and SIGTERM ask for a stop at the next step boundary (a second SIGINT stops at
        once); elsewhere (not the main thread) signals keep their handlers."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def ask(number: int, frame: Any) -> None:
            if self.stop_signal is not None and number == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(number).name

        saved = {number: signal.signal(number, ask) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in saved.items():
                signal.signal(number, handler)

    def _stop_requested(self) -> bool:
        stop = self.stop_signal is not None
        if self.world > 1:  # every rank stops at the same step
            stop = distributed.sum_values([float(stop)], self.device)[0] > 0
        return stop


def train(
    model_config: MemorizingTransformerConfig,
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    model: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) a run and returns ``Trainer.run``'s summary (``model``: see ``Trainer``).

    The run folder is locked while it trains (``run_folder.py``). A new run into a folder that holds one is
    refused unless ``overwrite`` (which deletes that run first); ``resume`` cuts ``metrics.jsonl`` back to the
    checkpoint's step.

    Raises:
        RunFolderError: the folder is in use, or holds a run and neither ``resume`` nor ``overwrite`` is given.
        TrainingDiverged, Interrupted: see ``Trainer.run``.
        FileNotFoundError: ``resume`` without a checkpoint in ``run_dir``, or ``init_from`` without one.
        ValueError: resuming with a different model config or batch layout; ``init_from`` another model.
    """
    # rank 0 owns the folder (under torchrun the process group starts in Trainer, so read the launcher's RANK)
    main = int(os.environ.get("RANK", "0")) == 0
    lock = claim_run_folder(config.run_dir, resume=resume, overwrite=overwrite) if main else None
    try:
        trainer = Trainer(model_config, config, progress=progress, model=model)
        if resume:
            trainer.restore()
            if main:
                truncate_metrics(config.run_dir, trainer.step_count)
        elif config.init_from:
            trainer.init_from(config.init_from)
        return trainer.run()
    finally:
        if lock is not None:
            lock.release()
