"""scripts/gpu_checks.sh, the one prepared call for a lent GPU machine, must not break unnoticed: its syntax, the
scripts it calls, and a CPU dry run of one part (the others take minutes)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "gpu_checks.sh"


def test_the_gpu_script_parses_and_calls_only_what_exists():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    called = set(re.findall(r"(benchmarks/\w+\.py|tests/\w+\.py)", SCRIPT.read_text()))
    assert called and all((ROOT / path).exists() for path in called), called


def test_a_cpu_dry_run_of_the_search_part(tmp_path):
    env = dict(os.environ, DEVICE="cpu", QUICK="1", OUT=str(tmp_path), PARTS="3b", PYTHON=sys.executable,
               BEFORE=str(tmp_path / "none"))
    result = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (tmp_path / "gpu_checks.log").read_text()
    assert "3b. the search" in log and "| memory | queries per head |" in log
    assert "failed" not in log and "disagree" not in log
    assert (tmp_path / "topk-cpu.json").exists()
