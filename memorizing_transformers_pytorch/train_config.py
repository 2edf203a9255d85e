"""The training run's settings: ``TrainConfig``, one typed dataclass (the command line's ``train`` flags are
made from its fields and help texts), and which of them a resumed run may change.

It needs only the standard library, so the command line can build its parser on a core-only install and name
the missing extra when a command needs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainConfig", "RESUMABLE_CHANGES"]


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
    compile: bool = field(default=False, metadata=_help(
        "torch.compile each layer (the memory search stays eager; the first steps are slow while it compiles)"))
    seed: int = field(default=0, metadata=_help("seed for weights and data order"))
    checkpoint_every: int = field(default=200, metadata=_help("steps between checkpoints (0 = only at the end)"))
    log_every: int = field(default=10, metadata=_help("steps between metric lines"))
    device: str = field(default="cpu", metadata=_help("torch device"))
    knn_memory: bool = field(default=True, metadata=_help(
        "train with the kNN memory; --no-knn-memory trains the same architecture with memory off (a fair baseline)"))
    max_minutes: float = field(default=0.0, metadata=_help(
        "stop (and checkpoint) after this much training time even before --steps (0 = no limit)"))
    keep_checkpoints: int = field(default=2, metadata=_help(
        "checkpoints kept, the highest steps (the newest complete one is never deleted)"))
    max_bad_steps: int = field(default=3, metadata=_help(
        "stop after this many steps in a row whose loss or gradient is not finite (each one is skipped: no update)"))
    progress_every: float = field(default=30.0, metadata=_help(
        "seconds between progress lines on stderr when it is not a terminal (logs, nohup, CI); 0 = none"))
    init_from: str = field(default="", metadata=_help(
        "start from the weights of this run folder or checkpoint (same model config, except that the memory "
        "size, k and index may differ), e.g. a copy warm-up run; the optimizer, schedule and data start fresh. "
        "Ignored when resuming"))
    eval_every: int = field(default=0, metadata=_help(
        "steps between validations (and one at the last step): the loss on held-out documents (the data's valid "
        "split, else its test split), read with fresh memories (0 = off)"))
    eval_tokens: int = field(default=32768, metadata=_help(
        "tokens of held-out documents per validation: the split's first documents, the last one cut"))
    tensorboard: bool = field(default=False, metadata=_help(
        "also write the metrics as TensorBoard events into RUN_DIR/tensorboard (needs: pip install tensorboard)"))

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "steps", "grad_accum", "log_every", "keep_checkpoints",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_tokens < 1:
            raise ValueError(f"eval_tokens must be >= 1, got {self.eval_tokens}")
        for name in ("warmup_steps", "checkpoint_every", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.adam_beta2 < 1:
            raise ValueError(f"adam_beta2 must be in (0, 1), got {self.adam_beta2}")
        if not self.progress_every >= 0:
            raise ValueError(f"progress_every must be >= 0, got {self.progress_every}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got {self.lr} and {self.min_lr_ratio}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown training config keys: {unknown}")
        for f in dataclasses.fields(cls):  # a JSON value of the wrong type, named (an int is a fine float)
            if f.name in data:
                value, kind = data[f.name], {"int": int, "float": (int, float), "bool": bool, "str": str}[str(f.type)]
                if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
                    raise ValueError(f"training config: {f.name} must be a {f.type}, got {value!r}")
        return cls(**data)


# flags that may change when a run is resumed; every other setting comes from the run's saved configs
RESUMABLE_CHANGES = ("steps", "max_minutes", "checkpoint_every", "log_every", "device", "keep_checkpoints",
                     "max_bad_steps", "progress_every", "init_from", "eval_every", "eval_tokens", "tensorboard",
                     "compile")


# metrics written as TensorBoard scalars (``tensorboard=True``): record key -> tag
