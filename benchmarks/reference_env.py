"""Build (once) and locate the virtualenv that holds the reference PyPI package.

The reference package ``memorizing-transformers-pytorch==0.4.1`` has the same import
name as ours (``memorizing_transformers_pytorch``), so it can never share a process
with our code. This module creates ``benchmarks/.reference-venv`` with:

    pip install torch==2.13.0
    pip install faiss-cpu einops einops-exts filelock joblib
    pip install --no-deps memorizing-transformers-pytorch==0.4.1

and offers helpers to run a benchmark worker either with our interpreter or with
the reference one (always in a fresh temporary working directory, because the
reference writes numpy memmap files into the current directory).

Run it on its own to build the environment and print the interpreter path:

    .venv/bin/python benchmarks/reference_env.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".reference-venv"
REFERENCE_VERSION = "0.4.1"
TORCH_VERSION = "2.13.0"

_INSTALL_STEPS = (
    [f"torch=={TORCH_VERSION}"],
    ["faiss-cpu", "einops", "einops-exts", "filelock", "joblib"],
    ["--no-deps", f"memorizing-transformers-pytorch=={REFERENCE_VERSION}"],
)


def venv_python(venv_dir: Path = VENV_DIR) -> Path:
    return venv_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _is_ready(python: Path) -> bool:
    """True when the interpreter imports the reference package at the pinned version."""
    if not python.exists():
        return False
    check = (
        "import importlib.metadata as m, faiss, torch, einops_exts;"
        f"assert m.version('memorizing-transformers-pytorch') == '{REFERENCE_VERSION}';"
        f"assert torch.__version__.split('+')[0] == '{TORCH_VERSION}'"
    )
    result = subprocess.run([str(python), "-c", check], capture_output=True, check=False,
                            cwd=BENCH_DIR.anchor, env=faiss_env())
    return result.returncode == 0


def ensure_reference_venv(venv_dir: Path = VENV_DIR, *, quiet: bool = True) -> Path:
    """Create the reference virtualenv if needed; return the path of its python."""
    python = venv_python(venv_dir)
    if _is_ready(python):
        return python
    print(f"[reference_env] building {venv_dir} (a few minutes, once)", file=sys.stderr, flush=True)
    if not python.exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    for packages in _INSTALL_STEPS:
        command = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        command += ["--quiet"] if quiet else []
        print(f"[reference_env] pip install {' '.join(packages)}", file=sys.stderr, flush=True)
        subprocess.run(command + packages, check=True)
    if not _is_ready(python):
        raise RuntimeError(f"{venv_dir} was built but does not import the reference package")
    return python


def faiss_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a process that may load faiss: no OpenMP busy-waiting.

    Busy-waiting OpenMP threads (faiss' default) would steal CPU from torch's own
    thread pool and from anything else running on the machine.
    """
    env = dict(os.environ if base is None else base)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def reference_site_packages(python: Path | None = None) -> Path:
    """Where the reference package's source lives (handy for reading it)."""
    python = python or venv_python()
    out = subprocess.run(
        [str(python), "-c", "import memorizing_transformers_pytorch as m, os; print(os.path.dirname(m.__file__))"],
        capture_output=True, text=True, check=True, cwd=BENCH_DIR.anchor, env=faiss_env(),
    )
    return Path(out.stdout.strip())


if __name__ == "__main__":
    path = ensure_reference_venv(quiet=False)
    print(path)
    print(reference_site_packages(path))
