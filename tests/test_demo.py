"""The demo command (demo.py): a copy warm-up, then a memory model and a memory-off baseline side by side."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memorizing_transformers_pytorch.checkpoint import load_checkpoint, load_model
from memorizing_transformers_pytorch.cli import main

TINY = ["--preset", "tiny", "--num-tokens", "256", "--memorizing-layers", "1", "--xl-max-memories", "16",
        "--seq-len", "16", "--steps", "3", "--warmup-steps", "1", "--copy-warmup-steps", "2",
        "--max-docs", "2", "--max-doc-bytes", "96", "--memory-sizes", "0,32", "--split", "train"]


def test_a_byte_level_run_warms_up_on_bytes_whatever_its_vocabulary():
    """What the warm-up copies follows what the run reads (bytes here), not the model's vocabulary size."""
    from memorizing_transformers_pytorch.demo import warmup_config
    from memorizing_transformers_pytorch.train_config import TrainConfig

    config = TrainConfig(data="stdlib", run_dir="runs/x")
    assert warmup_config(config, 5).data == "copy"
    assert warmup_config(config, 5, vocab=300).data == "copy:vocab=300"


def test_a_byte_level_demo_with_a_larger_vocabulary_warms_up_on_bytes(corpus, tmp_path):
    run = tmp_path / "demo"
    main(["demo", "--data", corpus, "--run-dir", str(run), *TINY[:2], "--num-tokens", "300", *TINY[4:],
          "--memory-sizes", "0"])
    assert load_checkpoint(run / "warmup")["train_config"]["data"] == "copy"


def test_demo_trains_both_models_from_one_warmup_and_writes_the_comparison(corpus, tmp_path, capsys):
    run = tmp_path / "demo"
    main(["demo", "--data", corpus, "--run-dir", str(run), *TINY])
    result = json.loads((run / "eval.json").read_text())
    assert set(result["bits_per_byte"]) == {"with_memory", "without_memory", "baseline"}
    assert set(result["by_memory_size"]) == {"0", "32"}
    assert (run / "eval.png").exists()
    memory, baseline, warmup = (load_checkpoint(run / name) for name in ("memory", "baseline", "warmup"))
    assert memory["train_config"]["knn_memory"] and not baseline["train_config"]["knn_memory"]
    assert memory["train_config"]["init_from"] == baseline["train_config"]["init_from"] == str(run / "warmup")
    assert warmup["train_config"]["data"] == "copy"
    model = load_model(run / "memory")
    assert model.config.token_shift > 0  # the demo's default recipe
    printed = capsys.readouterr().out
    assert "memory on: " in printed and "than off" in printed and "[demo] total" in printed
    # a second demo replaces its own runs
    main(["demo", "--data", corpus, "--run-dir", str(run), *TINY, "--copy-warmup-steps", "0"])
    assert not (run / "warmup").exists()
    assert load_checkpoint(run / "memory")["train_config"]["init_from"] == ""


def test_demo_refuses_a_folder_it_did_not_make_and_bad_settings(corpus, tmp_path):
    run = tmp_path / "taken"
    (run / "memory").mkdir(parents=True)
    (run / "memory" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        main(["demo", "--data", corpus, "--run-dir", str(run), *TINY])
    assert (run / "memory" / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit):
        main(["demo", "--data", corpus, "--run-dir", str(tmp_path / "other"), *TINY, "--copy-warmup-steps", "-1"])
    with pytest.raises(SystemExit):
        main(["demo", "--data", corpus, "--run-dir", str(tmp_path / "third"), *TINY, "--memorizing-layers", ""])


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                pass
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc")
def test_sigterm_to_the_demo_ends_its_training_processes(corpus, tmp_path):
    run = tmp_path / "demo"
    steps = [a if a != "3" else "100000" for a in TINY]  # runs until stopped
    parent = subprocess.Popen([sys.executable, "-m", "memorizing_transformers_pytorch", "demo", "--data", corpus,
                               "--run-dir", str(run), *steps, "--copy-warmup-steps", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = str(run / "memory.model.json")
    deadline = time.monotonic() + 120
    while len(_processes_mentioning(marker)) == 0 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.5)
    assert _processes_mentioning(marker), "the demo did not start its training processes"
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) != 0
    assert _processes_mentioning(marker) == []
