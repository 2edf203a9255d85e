"""Checkpoints: a directory per step, written atomically, loaded without unpickling.

Layout of ``RUN_DIR/checkpoints/step-000123/``:
    model.safetensors     weights
    config.json           model config
    train_config.json     training config (when saved by training)
    memories.safetensors  kNN memories and XL caches of the training streams
    state.json            step, data position, metrics needed to continue
    trainer.pt            optimizer, scheduler and RNG state (tensors only; loaded with weights_only)
    tokenizer.json        the tokenizer of a token-level model (``checkpoint_tokenizer``); none for bytes

``RUN_DIR/checkpoints/latest`` names the newest complete checkpoint. Each checkpoint
is written into a temporary directory and renamed into place, and ``latest`` is
replaced with ``os.replace``, so a crash leaves either the old or the new
checkpoint, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .attention import XLCache
from .config import SEARCH_FIELDS, MemorizingTransformerConfig
from .memory import KNNMemory
from .model import MemorizingTransformer
from .tokenizer import BYTES, HuggingFaceTokenizer, Tokenizer, check_model_fits, check_same_tokenizer, load_tokenizer

__all__ = ["save_checkpoint", "load_model", "load_weights", "load_checkpoint", "latest_checkpoint", "resolve_checkpoint",
           "memories_to_tensors", "memories_from_tensors", "checkpoint_tokenizer"]


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


def memories_to_tensors(knn_memories: list[KNNMemory] | None, xl_memories: tuple[XLCache, ...] | None) -> dict:
    tensors = {}
    for i, memory in enumerate(knn_memories or []):
        for name, tensor in memory.state_dict().items():
            tensors[f"knn.{i}.{name}"] = tensor.detach().clone()
    for i, cache in enumerate(xl_memories or ()):
        for name, tensor in cache._asdict().items():
            tensors[f"xl.{i}.{name}"] = tensor.detach().clone()
    return tensors


def memories_from_tensors(tensors: dict, knn_memories: list[KNNMemory] | None) -> tuple[XLCache, ...] | None:
    """Loads kNN memory state into ``knn_memories`` in place; returns the XL caches."""
    for i, memory in enumerate(knn_memories or []):
        memory.load_state_dict({k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"knn.{i}.")})
    xl = []
    i = 0
    while f"xl.{i}.keys" in tensors:
        xl.append(XLCache(tensors[f"xl.{i}.keys"], tensors[f"xl.{i}.values"], tensors[f"xl.{i}.valid"]))
        i += 1
    return tuple(xl) if xl else None


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: MemorizingTransformer,
    *,
    state: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    memories: dict | None = None,
    keep: int = 2,
    files: dict[str, str] | None = None,
) -> Path:
    """Writes ``run_dir/checkpoints/step-{step}`` atomically and points ``latest`` at it.

    Keeps the newest ``keep`` checkpoints and deletes older ones. ``files``: more text files to write into
    the checkpoint, by name (e.g. ``tokenizer.json``).
    """
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(weights, tmp / "model.safetensors")
        (tmp / "config.json").write_text(model.config.to_json() + "\n")
        if train_config is not None:
            (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
        if memories:
            save_file({k: v.cpu() for k, v in memories.items()}, tmp / "memories.safetensors")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        for file in tmp.iterdir():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _write_text_atomic(root / "latest", final.name + "\n")
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accepts a checkpoint directory or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint found at {path} (expected model.safetensors or checkpoints/latest)")
    return latest


def load_model(path: str | Path, *, device: str | torch.device = "cpu", **search: Any) -> MemorizingTransformer:
    """Builds the model from ``config.json`` and loads its safetensors weights.

    ``search``: other memory-search settings (``SEARCH_FIELDS``, e.g. ``num_retrieved_memories=2``); they
    change no weight.
    """
    path = resolve_checkpoint(path)
    config = MemorizingTransformerConfig.from_json(path / "config.json")
    unknown = sorted(set(search) - set(SEARCH_FIELDS))
    if unknown:
        raise ValueError(f"load_model: {unknown} are not search settings ({', '.join(SEARCH_FIELDS)})")
    if search:
        config = dataclasses.replace(config, **search)
    model = MemorizingTransformer(config)
    model.load_state_dict(load_weights(path))
    return model.to(device)


def load_weights(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The weights in a checkpoint folder's ``model.safetensors``."""
    return load_file(Path(checkpoint_dir) / "model.safetensors", device=str(device))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Everything a training run needs to resume: the path, state, configs, trainer state, memories."""
    path = resolve_checkpoint(path)
    result: dict[str, Any] = {"path": path, "state": json.loads((path / "state.json").read_text())}
    if (path / "train_config.json").is_file():
        result["train_config"] = json.loads((path / "train_config.json").read_text())
    if (path / "trainer.pt").is_file():
        result["trainer_state"] = torch.load(path / "trainer.pt", weights_only=True)
    if (path / "memories.safetensors").is_file():
        result["memories"] = load_file(path / "memories.safetensors")
    return result


def checkpoint_tokenizer(path: str | Path, tokenizer: str | Path | None = None) -> Tokenizer:
    """The tokenizer of a checkpoint (or run folder): its ``tokenizer.json``, or bytes without one.

    ``tokenizer``, a ``tokenizer.json`` or a folder holding one, may be given: it must have the checkpoint's
    vocabulary (for a checkpoint without a tokenizer, the model's ``num_tokens`` and padding / document-start ids).

    Raises:
        ValueError: ``tokenizer`` does not match the checkpoint.
    """
    path = resolve_checkpoint(path)
    stored = HuggingFaceTokenizer.from_file(path / "tokenizer.json") if (path / "tokenizer.json").is_file() else None
    if not tokenizer:
        return stored or BYTES
    given = load_tokenizer(tokenizer)
    if stored is not None:
        check_same_tokenizer(given, stored, f"--tokenizer {tokenizer} with the checkpoint {path}")
    check_model_fits(given, MemorizingTransformerConfig.from_json(path / "config.json"), f"the checkpoint {path}")
    return given
