"""Multi-process runs under ``torchrun``: process-group set-up and the few collectives training needs.

``torchrun`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them (a plain
``python`` run) everything here is a no-op for a world of one process. The backend
is gloo on CPU and nccl on CUDA, PyTorch's own engines.

What is sharded and what is replicated in training:
    - replicated: the weights and the optimizer state (DDP keeps them equal by
      averaging gradients);
    - sharded: the document streams. Training builds one global
      ``DocumentStream`` of ``world_size * batch_size`` rows and rank ``r`` reads
      rows ``r * batch_size ... (r + 1) * batch_size - 1``, so each document goes to
      exactly one rank, and a run on N processes sees the same data as one process
      with N times the batch size. Each rank's kNN memories and XL caches belong to
      its own rows; they are plain tensors, not module buffers, so DDP never
      broadcasts them.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["setup", "is_distributed", "rank", "world_size", "is_main", "mean", "sum_values", "all_succeeded",
           "barrier", "cleanup"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str) -> torch.device:
    """Joins the process group ``torchrun`` describes (if any) and returns this rank's device.

    On CUDA each process takes GPU ``LOCAL_RANK``; on CPU all use the CPU.

    Raises:
        ValueError: a device this machine does not have (``check_device``).
    """
    check_device(device)
    requested = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return requested
    if requested.type == "cuda":
        requested = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(requested)
    if not is_distributed():
        dist.init_process_group(backend="nccl" if requested.type == "cuda" else "gloo", device_id=
                                requested if requested.type == "cuda" else None)
    return requested


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def _reduce(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_values(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum over ranks (identity in a single process)."""
    return _reduce(values, torch.device(device)) if is_distributed() else list(values)


def mean(value: float, device: torch.device | str = "cpu") -> float:
    """The mean of ``value`` over ranks."""
    return sum_values([value], device)[0] / world_size()


def all_succeeded(ok: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``ok`` is True on every rank (a vote, so that one rank's failure stops all of them)."""
    if not is_distributed():
        return ok
    return sum_values([0.0 if ok else 1.0], device)[0] == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def check_device(device: str | None) -> None:
    """Refuses a device this torch build or machine does not have, in one line.

    Raises:
        ValueError: an unknown device name, or CUDA / MPS without one.
    """
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ValueError(f"--device {device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch build has no CUDA or no GPU is visible "
                         f"(torch {torch.__version__}); use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available here; use --device cpu")
