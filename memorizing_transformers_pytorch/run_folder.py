"""A run folder belongs to one run: a lock, a refusal to train over an existing run, and metrics that never
repeat or half-write a line.

``RUN_DIR/.lock`` is held (``fcntl.flock``, released by the kernel when the process ends, however it ends) for
as long as a run trains there; it holds the owner's pid, which a refusal names. ``claim_run_folder`` takes
the lock and checks what the folder holds against what was asked: a new run into a folder that holds one is
refused unless ``overwrite`` (which deletes its checkpoints, metrics and TensorBoard events first); ``resume``
needs a run there.
``truncate_metrics`` cuts ``metrics.jsonl`` back to the resumed step (and drops a half-written last line).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["RunLock", "RunFolderError", "claim_run_folder", "holds_run", "truncate_metrics", "append_metrics", "finite_json"]

METRICS = "metrics.jsonl"
LOCK = ".lock"
TENSORBOARD = "tensorboard"  # the folder of TensorBoard event files (train --tensorboard)


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked; the message says why and what to do."""


class RunLock:
    """An exclusive lock on a run folder (a no-op where ``fcntl`` does not exist)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.file = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise RunFolderError(f"{self.path.parent} is in use by another run (pid {holder}); wait for it to "
                                 f"finish, stop it, or give another --run-dir") from None
        file.seek(0)
        file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file = file
        return self

    def release(self) -> None:
        if self.file is not None:
            self.file.close()  # closing releases the flock
            self.file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def holds_run(run_dir: str | Path) -> bool:
    """Whether the folder holds a run's checkpoints or metrics."""
    run_dir = Path(run_dir)
    return (run_dir / METRICS).exists() or any((run_dir / "checkpoints").glob("step-*"))


def claim_run_folder(run_dir: str | Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Locks the run folder for this run and checks it against ``resume`` / ``overwrite``; returns the lock
    (release it when the run ends).

    Raises:
        RunFolderError: the folder is locked by another process; a new run into a folder holding one without
            ``overwrite``; ``resume`` and ``overwrite`` together.
    """
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --run-dir and --overwrite deletes it: give one of them")
    run_dir = Path(run_dir)
    lock = RunLock(run_dir).acquire()
    try:
        if not resume and holds_run(run_dir):
            if not overwrite:
                raise RunFolderError(f"{run_dir} already holds a run: continue it with --resume, delete it with "
                                     f"--overwrite, or give another --run-dir")
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            shutil.rmtree(run_dir / TENSORBOARD, ignore_errors=True)
            (run_dir / METRICS).unlink(missing_ok=True)
    except BaseException:
        lock.release()
        raise
    return lock


def truncate_metrics(run_dir: str | Path, step: int) -> int:
    """Keeps the lines of ``metrics.jsonl`` up to ``step`` (a resumed run writes the later ones again) and drops
    lines that are not whole JSON records (a write cut short); returns how many lines were removed."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return 0
    kept, removed = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError
        except ValueError:
            removed += 1
            continue
        if record["step"] <= step:
            kept.append(line)
        else:
            removed += 1
    if removed:
        tmp = path.with_name(f".{METRICS}.tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, path)
    return removed


def append_metrics(run_dir: str | Path, record: dict) -> None:
    """Appends one line to ``metrics.jsonl`` in a single write (strict JSON: non-finite numbers become null).

    Raises:
        OSError: the write failed (disk full, read-only); the line is then removed again if partly written.
    """
    path = Path(run_dir) / METRICS
    line = (json.dumps(finite_json(record), allow_nan=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, line)
            if written != len(line):
                raise OSError(28, "short write")
        except OSError as error:
            try:
                os.ftruncate(fd, size)
            except OSError:
                pass
            raise OSError(f"{path}: could not write a metrics line ({error.strerror or error}); free space or "
                          f"fix permissions, then --resume") from None
    finally:
        os.close(fd)


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, so that it is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
