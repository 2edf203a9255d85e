"""Shared helpers for the benchmark scripts: workers, timing, peak memory, tables, JSON.

Every measurement runs in a *worker*: the benchmark script itself, started again as
``python SCRIPT --worker '<json spec>'`` in a fresh process, so that

* our package and the reference package (same import name) never meet in one process,
* peak RSS (``ru_maxrss``, a high-water mark) belongs to one (implementation, case) only,
* the reference, which writes memmap files into the working directory, runs in a
  temporary directory that is removed afterwards.

A worker prints its result as one line ``RESULT_JSON: {...}`` on stdout; its stderr
(progress messages) goes straight through to the terminal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_RESULTS_DIR = BENCH_DIR / "results"
RESULT_MARKER = "RESULT_JSON: "
IMPLS = ("ours", "reference")


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- workers
def interpreters(impls: Sequence[str]) -> dict[str, str]:
    """The python executable of each implementation (building the reference venv if needed)."""
    pythons = {}
    for impl in impls:
        if impl == "ours":
            pythons[impl] = sys.executable
        elif impl == "reference":
            from reference_env import ensure_reference_venv

            pythons[impl] = str(ensure_reference_venv())
        else:
            raise ValueError(f"unknown implementation {impl!r}; choose from {IMPLS}")
    return pythons


def run_worker(script: Path, spec: dict[str, Any], python: str, *, timeout: float | None = None,
               omp_wait_policy: str = "PASSIVE", checkout: Path | None = None) -> dict[str, Any]:
    """Run ``python script --worker spec`` in a temporary directory; return its result dict.

    Every worker, ours or the reference, gets the same ``OMP_WAIT_POLICY`` (default
    PASSIVE, which faiss needs, see ``reference_env.faiss_env``): with busy-waiting
    OpenMP threads, torch ran 7x slower on a 2-core machine shared with other work.
    ``omp_wait_policy="default"`` leaves the variable as it is. ``checkout``: import our package from this
    folder (e.g. a git worktree of an older commit, to time before against after) instead of this checkout.

    A failing or timed-out worker gives ``{"error": ...}`` instead of raising, so one
    bad case does not lose the rest of a long run.
    """
    env = dict(os.environ)
    if spec.get("impl") == "reference":
        env.pop("PYTHONPATH", None)  # never let our package leak into the reference's process
    else:
        # ours: this checkout first, so it runs also where the package is not installed (a GPU box)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(checkout or REPO_ROOT), env.get("PYTHONPATH")]))
    if omp_wait_policy != "default":
        env["OMP_WAIT_POLICY"] = omp_wait_policy
    with tempfile.TemporaryDirectory(prefix=f"bench-{spec.get('impl', 'worker')}-") as workdir:
        try:
            done = subprocess.run(
                [python, str(script), "--worker", json.dumps(spec)],
                cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    tail = "\n".join(done.stdout.splitlines()[-5:])
    return {"error": f"worker exited with status {done.returncode} without a result. stdout tail:\n{tail}"}


def worker_entry(run: Callable[[dict[str, Any]], dict[str, Any]]) -> bool:
    """If this process was started as a worker, run it, print the result and return True."""
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        spec = json.loads(sys.argv[2])
        result = run(spec)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return True
    return False


def check_impl(impl: str, module: Any) -> str:
    """Make sure the worker imported the implementation it was asked for; return its path."""
    path = str(Path(module.__file__).resolve())
    is_reference = ".reference-venv" in path
    if is_reference != (impl == "reference"):
        raise RuntimeError(f"worker for {impl!r} imported {path}")
    return path


# ---------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], *, reps: int, warmup: int = 1, device: str = "cpu") -> list[float]:
    """Milliseconds of each of ``reps`` calls of ``fn`` (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return times


def summarize(times_ms: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": statistics.median(times_ms),
        "min_ms": min(times_ms),
        "max_ms": max(times_ms),
        "reps": len(times_ms),
    }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def peak_device_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def matmul_tflops(device: str, dtype_name: str, *, n: int = 2048, reps: int = 5) -> float:
    """Measured throughput of an ``n x n`` by ``n x n`` matmul, in TFLOP/s (median of ``reps``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    times = time_calls(lambda: a @ b, reps=reps, warmup=2, device=device)
    return 2 * n**3 / (statistics.median(times) / 1e3) / 1e12


# --------------------------------------------------------------- environment
def environment(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": _cpu_model(),
        "device": device,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_device(device: str) -> None:
    """Exit with a clear message when the requested device cannot be used."""
    if device.startswith("cuda") and not cuda_available():
        sys.exit(f"--device {device}: CUDA is not available in this environment (torch CPU build or no GPU).")


# -------------------------------------------------------------------- output
def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """``columns`` are (key in row, header). Missing values print as ``-``."""
    header = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    lines = [header, rule]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(key)) for key, _ in columns) + " |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--impl", default="ours,reference",
                        help="comma-separated implementations to run: ours, reference (default both)")
    parser.add_argument("--device", default="cpu", help="device for OUR implementation (the reference is CPU only)")
    parser.add_argument("--out", type=Path, default=DEFAULT_RESULTS_DIR, help="directory for the JSON results")
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with small sizes and few reps")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for one worker")
    parser.add_argument("--omp-wait-policy", default="PASSIVE", choices=("PASSIVE", "ACTIVE", "default"),
                        help="OMP_WAIT_POLICY for every worker, ours and the reference alike (default PASSIVE)")


def selected_impls(args: argparse.Namespace) -> list[str]:
    impls = [name.strip() for name in args.impl.split(",") if name.strip()]
    for impl in impls:
        if impl not in IMPLS:
            sys.exit(f"--impl: unknown implementation {impl!r}; choose from {', '.join(IMPLS)}")
    if args.device != "cpu" and "reference" in impls:
        log(f"note: the reference package runs on CPU only (faiss-cpu); skipping it for --device {args.device}")
        impls.remove("reference")
    return impls


def alternate(impls: Sequence[str], index: int) -> list[str]:
    """The implementations in alternating order (reversed every other case) to even out drift."""
    return list(impls) if index % 2 == 0 else list(reversed(impls))
