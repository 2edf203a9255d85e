"""Checkpoints: a directory per step, written atomically, loaded without unpickling.

Layout of ``RUN_DIR/checkpoints/step-0000123/``:
    model.safetensors           weights
    config.json                 model config
    train_config.json           training config (when saved by training)
    state.json                  step, data position, world size
    trainer.pt                  optimizer and scheduler state (tensors only; loaded with weights_only)
    memories-rank{R}.safetensors  each process's own kNN memories, XL caches and RNG state (training)
    tokenizer.json              the tokenizer of a token-level model (``checkpoint_tokenizer``); none for bytes

``RUN_DIR/checkpoints/latest`` names the newest complete checkpoint. A checkpoint is written into a
temporary folder (``.step-0000123.tmp``; every process writes its own memory shard there, so no rank
sends its memories to another), fsynced, renamed into place, and only then does ``latest`` move, with
``os.replace``. A crash at any moment leaves the previous checkpoint loadable; the next save removes what a
crash left behind. Anything unreadable raises ``CheckpointError``, one line naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import MemorizingTransformerConfig
from .memory import KNNMemory
from .model import MemorizingTransformer
from .tokenizer import BYTES, HuggingFaceTokenizer, Tokenizer, check_model_fits, check_same_tokenizer, load_tokenizer
from .xl_cache import XLCache

__all__ = ["CheckpointError", "save_checkpoint", "temporary_folder", "prepare_checkpoint", "write_shard",
           "commit_checkpoint", "abort_checkpoint", "load_model", "load_weights", "load_config", "load_state_dict_into",
           "load_checkpoint", "load_trainer_state", "load_shard", "latest_checkpoint", "resolve_checkpoint",
           "memories_to_tensors", "memories_from_tensors", "checkpoint_tokenizer"]


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, corrupted or of another model; the message names it."""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------ memories
def memories_to_tensors(knn_memories: Sequence[KNNMemory] | None, xl_memories: Sequence[XLCache] | None
                        ) -> dict[str, torch.Tensor]:
    """The state of the memories as named tensors (no copies beyond what contiguity needs)."""
    tensors = {}
    for i, memory in enumerate(knn_memories or []):
        for name, tensor in memory.state_dict().items():
            tensors[f"knn.{i}.{name}"] = tensor.detach()
    for i, cache in enumerate(xl_memories or ()):
        for name, tensor in cache._asdict().items():
            if tensor is not None:
                tensors[f"xl.{i}.{name}"] = tensor.detach()
    return tensors


def memories_from_tensors(tensors: dict, knn_memories: Sequence[KNNMemory] | None) -> tuple[XLCache, ...] | None:
    """Loads kNN memory state into ``knn_memories`` in place; returns the XL caches."""
    for i, memory in enumerate(knn_memories or []):
        memory.load_state_dict({k.split(".", 2)[2]: v for k, v in tensors.items() if k.startswith(f"knn.{i}.")})
    xl = []
    i = 0
    while f"xl.{i}.keys" in tensors:
        xl.append(XLCache(tensors[f"xl.{i}.keys"], tensors[f"xl.{i}.values"], tensors[f"xl.{i}.valid"],
                          tensors.get(f"xl.{i}.inputs")))
        i += 1
    return tuple(xl) if xl else None


# ----------------------------------------------------------------------------------------------------- save
def temporary_folder(run_dir: str | Path, step: int) -> Path:
    """Where step ``step``'s checkpoint is written before it is renamed into place."""
    return Path(run_dir) / "checkpoints" / f".step-{step:07d}.tmp"


def prepare_checkpoint(tmp: Path) -> None:
    """Creates the empty temporary folder ``tmp`` (``temporary_folder``), after removing what an interrupted
    save left behind (temporary folders and ``latest`` files). One process calls it; all then write into it."""
    root = tmp.parent
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in root.glob(".latest.*"):
        stale.unlink(missing_ok=True)
    tmp.mkdir()


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors on the CPU, each with storage of its own, as safetensors needs (e.g. layers' XL masks cut from
    one tensor, or a Hugging Face model's tied input and output embeddings)."""
    out, storages = {}, set()
    for name, tensor in tensors.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.untyped_storage().data_ptr() in storages:
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        out[name] = tensor
    return out


def write_shard(tmp: Path, rank: int, tensors: dict[str, torch.Tensor]) -> None:
    """Writes one process's memories (and RNG state) as ``memories-rank{rank}.safetensors`` into ``tmp``."""
    path = tmp / f"memories-rank{rank}.safetensors"
    save_file(_unshared(tensors), path)
    _fsync(path)


def commit_checkpoint(tmp: Path, step: int, model: MemorizingTransformer, *, state: dict[str, Any],
                      train_config: dict[str, Any] | None = None, trainer_state: dict[str, Any] | None = None,
                      keep: int = 2, files: dict[str, str] | None = None) -> Path:
    """Adds the weights, configs, state and ``files`` (more text files by name, e.g. ``tokenizer.json``) to
    ``tmp``, renames it to ``step-{step}``, then points ``latest`` at it and deletes all but the newest ``keep``."""
    root = tmp.parent
    final = root / f"step-{step:07d}"
    save_file(_unshared(model.state_dict()), tmp / "model.safetensors")
    (tmp / "config.json").write_text(model.config.to_json() + "\n")
    if train_config is not None:
        (tmp / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2) + "\n")
    for name, text in (files or {}).items():
        (tmp / name).write_text(text)
    for file in tmp.iterdir():
        _fsync(file)
    if final.exists():  # a checkpoint of this step that `latest` does not name (a crash after the rename)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync(root)
    _write_text_atomic(root / "latest", final.name + "\n")
    _fsync(root)
    remove_old_checkpoints(root, keep, newest=final)
    return final


def step_of(path: Path) -> int | None:
    """The step of a checkpoint folder named ``step-N`` (any number of digits), else None."""
    match = re.fullmatch(r"step-(\d+)", path.name)
    return int(match.group(1)) if match else None


def remove_old_checkpoints(root: Path, keep: int, *, newest: Path) -> None:
    """Deletes all but the ``keep`` highest-step checkpoints, by step number (never by name), and never ``newest``
    (the one ``latest`` names) whatever its step."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    steps = sorted((step, path) for path in root.glob("step-*") if (step := step_of(path)) is not None)
    kept = {path for _, path in steps[-keep:]} | {newest}
    for _, path in steps:
        if path not in kept:
            shutil.rmtree(path, ignore_errors=True)


def abort_checkpoint(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: MemorizingTransformer,
    *,
    state: dict[str, Any],
    train_config: dict[str, Any] | None = None,
    trainer_state: dict[str, Any] | None = None,
    memories: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
    files: dict[str, str] | None = None,
) -> Path:
    """Writes ``run_dir/checkpoints/step-{step}`` atomically in one process (``memories`` as rank 0's shard)
    and points ``latest`` at it. On any error the temporary folder is removed and ``latest`` is unchanged."""
    tmp = temporary_folder(run_dir, step)
    prepare_checkpoint(tmp)
    try:
        if memories:
            write_shard(tmp, 0, memories)
        return commit_checkpoint(tmp, step, model, state=state, train_config=train_config,
                                 trainer_state=trainer_state, keep=keep, files=files)
    except BaseException:
        abort_checkpoint(tmp)
        raise


# ----------------------------------------------------------------------------------------------------- load
def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None when the run has none.

    Raises:
        CheckpointError: ``latest`` names a checkpoint folder that does not exist.
    """
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (UnicodeDecodeError, OSError) as error:
        raise CheckpointError(f"{pointer}: not readable ({error.__class__.__name__}); it should hold one line "
                              f"such as 'step-0000100': fix or delete it") from None
    if not re.fullmatch(r"step-\d+", name):  # a name in this folder, never a path elsewhere
        raise CheckpointError(f"{pointer}: names {name[:80]!r}, not a checkpoint folder of this run (step-N): fix "
                              f"or delete it")
    path = pointer.parent / name
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{pointer}: names {name!r}, which is not a complete checkpoint folder")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """Accepts a checkpoint directory or a run directory (its latest checkpoint).

    Raises:
        FileNotFoundError: neither. CheckpointError: a dangling ``latest``.
    """
    path = Path(path)
    if (path / "model.safetensors").is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint found at {path} (expected model.safetensors or checkpoints/latest)")
    return latest


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _read_safetensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device=str(device))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(error).split())})") from None


def load_config(checkpoint_dir: str | Path, config_class: Any = MemorizingTransformerConfig) -> Any:
    """The model config in a checkpoint folder (of ``config_class``: another model's config, e.g.
    ``hf.HFMemoryConfig``, for a checkpoint of a model given to ``Trainer``).

    Raises:
        CheckpointError: missing, not JSON, or not a valid config.
    """
    path = Path(checkpoint_dir) / "config.json"
    try:
        return config_class.from_dict(_read_json(path))
    except (TypeError, ValueError) as error:
        if isinstance(error, CheckpointError):
            raise
        raise CheckpointError(f"{path}: not a valid model config ({error})") from None


def load_weights(checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The checkpoint's weights.

    Raises:
        CheckpointError: missing or unreadable, or a weight holds NaN or infinite values (a diverged run).
    """
    path = Path(checkpoint_dir) / "model.safetensors"
    weights = _read_safetensors(path, device)
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: the weight {name} holds NaN or infinite values (the run diverged): use an "
                                  f"earlier checkpoint")
    return weights


def load_state_dict_into(model: MemorizingTransformer, weights: dict[str, torch.Tensor], path: Path) -> None:
    """``model.load_state_dict(weights)``, with a mismatch reported as one line naming the weights file."""
    if any(name.startswith(("key_shift_emb.", "query_shift_emb.")) for name in weights):
        raise CheckpointError(f"{path / 'model.safetensors'}: written before token_shift became a mix of the layer's "
                              "inputs (its per-token shift embeddings cannot be converted): train it again, or use "
                              "a checkpoint without token_shift")
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise CheckpointError(f"{path / 'model.safetensors'}: weights do not fit the model of "
                              f"{path / 'config.json'} ({first.rstrip('.')})") from None


def load_model(path: str | Path, *, device: str | torch.device = "cpu", **search: Any) -> MemorizingTransformer:
    """Builds the model from ``config.json`` and loads its safetensors weights.

    ``search``: other memory-search settings or attention kernel (``MemorizingTransformerConfig.search_fields``,
    e.g. ``num_retrieved_memories=2``, ``attention_kernel="flex"``); they change no weight.

    Raises:
        FileNotFoundError: no checkpoint at ``path``. CheckpointError: an unreadable or mismatched file.
        ValueError: settings that are not search settings.
    """
    path = resolve_checkpoint(path)
    config = load_config(path)
    fields = MemorizingTransformerConfig.search_fields
    unknown = sorted(set(search) - set(fields))
    if unknown:
        raise ValueError(f"load_model: {unknown} are not search settings ({', '.join(fields)})")
    if search:
        config = dataclasses.replace(config, **search)
    model = MemorizingTransformer(config)
    load_state_dict_into(model, load_weights(path), path)
    return model.to(device)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's path, state (``state.json``) and training config, without weights or memories.

    Raises:
        FileNotFoundError: no checkpoint at ``path``. CheckpointError: an unreadable file.
    """
    path = resolve_checkpoint(path)
    result: dict[str, Any] = {"path": path}
    state_path = path / "state.json"
    result["state"] = _read_json(state_path) if state_path.is_file() else {}
    if (path / "train_config.json").is_file():
        result["train_config"] = _read_json(path / "train_config.json")
    return result


def load_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    """The optimizer and scheduler state of a training checkpoint (``trainer.pt``, tensors only).

    Raises:
        CheckpointError: missing or unreadable.
    """
    path = Path(checkpoint_dir) / "trainer.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (not a training checkpoint; --init-from starts from its weights)")
    try:
        return torch.load(path, weights_only=True)
    except Exception as error:  # torch raises several kinds for a truncated or foreign file
        raise CheckpointError(f"{path}: not readable ({' '.join(str(error).split())[:200]})") from None


def load_shard(checkpoint_dir: str | Path, rank: int) -> dict[str, torch.Tensor]:
    """Process ``rank``'s memories and RNG state (``write_shard``).

    Raises:
        CheckpointError: the shard is missing or unreadable.
    """
    return _read_safetensors(Path(checkpoint_dir) / f"memories-rank{rank}.safetensors")


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
