"""Crash safety: a training run killed with SIGKILL at random moments, and while a checkpoint is being written,
resumes every time from a loadable checkpoint and ends with exactly the losses of a run that was never killed.

The default run kills it 6 times; ``pytest -m slow tests/test_crash.py`` kills it 40 times.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memorizing_transformers_pytorch.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_model,
    load_shard,
    load_trainer_state,
)

ROOT = Path(__file__).parent.parent
STEPS = 150


def command(corpus: Path, run: Path, resume: bool) -> list[str]:
    return [sys.executable, "-m", "memorizing_transformers_pytorch", "train", "--data", str(corpus),
            "--run-dir", str(run), "--steps", str(STEPS), "--seq-len", "16", "--batch-size", "2", "--lr", "3e-3",
            "--warmup-steps", "5", "--checkpoint-every", "1", "--log-every", "1", "--threads", "1",
            "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2",
            "--max-knn-memories", "64", "--num-retrieved-memories", "4", "--xl-max-memories", "16",
            # a life killed before its first checkpoint leaves only metrics: the next one starts the run anew
            "--resume" if resume else "--overwrite"]


def start(corpus: Path, run: Path, resume: bool) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(command(corpus, run, resume), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def losses_by_step(run: Path) -> dict[int, float]:
    """The last logged loss of each step (a killed life may have logged steps its successor redid)."""
    losses = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            losses[record["step"]] = record["loss"]
    return losses


def temporary_folders(run: Path) -> list[Path]:
    return sorted((run / "checkpoints").glob(".step-*")) if (run / "checkpoints").exists() else []


def check_loadable(run: Path) -> None:
    latest = latest_checkpoint(run)
    if latest is None:
        return
    load_model(run)
    assert "data" in load_checkpoint(run)["state"]
    load_trainer_state(latest)
    load_shard(latest, 0)


def kill_and_resume(corpus: Path, run: Path, kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    mid_write = 0
    for kill in range(kills):
        process = start(corpus, run, resume=latest_checkpoint(run) is not None)
        if kill % 2:  # while a checkpoint is being written: as soon as a temporary folder appears
            deadline = time.time() + 60
            while not temporary_folders(run) and process.poll() is None and time.time() < deadline:
                time.sleep(0.0005)
        else:  # at a random moment (start-up included)
            time.sleep(rng.uniform(0.5, 4.0))
        if process.poll() is not None:
            break  # it finished first
        process.send_signal(signal.SIGKILL)
        process.wait()
        mid_write += bool(temporary_folders(run))
        check_loadable(run)
    process = start(corpus, run, resume=latest_checkpoint(run) is not None)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return {"kills": kill + 1, "mid_write": mid_write}


@pytest.fixture(scope="module")
def corpus_and_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(3 + i % 9)))
    reference = root / "reference"
    process = start(corpus, reference, resume=False)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return corpus, losses_by_step(reference)


@pytest.mark.parametrize("kills", [pytest.param(6, id="6-kills"), pytest.param(40, id="40-kills", marks=pytest.mark.slow)])
def test_a_run_killed_at_random_moments_resumes_to_the_same_losses(corpus_and_reference, tmp_path, kills):
    corpus, reference = corpus_and_reference
    run = tmp_path / "run"
    counts = kill_and_resume(corpus, run, kills, seed=kills)
    print(f"\n{counts['kills']} kills, {counts['mid_write']} of them while a checkpoint was being written")
    assert counts["mid_write"] >= 1  # the writes were hit, not only the training steps between them
    assert temporary_folders(run) == []  # what the kills left behind was cleaned up
    assert latest_checkpoint(run).name == f"step-{STEPS:07d}"
    got = losses_by_step(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    assert got == reference  # exactly: same data position, RNG, memories and optimizer state after every kill
