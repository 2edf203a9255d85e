"""Runs a user can trust (the command line as a new user meets it): NaN stops the run, a run folder belongs to one
run, --resume continues with the run's own settings, interruption is a save point, and every failure is one
line that names the file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from memorizing_transformers_pytorch.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_model,
    remove_old_checkpoints,
    save_checkpoint,
)
from memorizing_transformers_pytorch.cli import main
from memorizing_transformers_pytorch.run_folder import (
    RunFolderError,
    RunLock,
    append_metrics,
    claim_run_folder,
    truncate_metrics,
)

ROOT = Path(__file__).parent.parent
TINY = ["--seq-len", "16", "--batch-size", "2", "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16",
        "--memorizing-layers", "2", "--max-knn-memories", "64", "--num-retrieved-memories", "4", "--xl-max-memories",
        "16", "--warmup-steps", "1"]


def train(corpus, run, *extra):
    main(["train", "--data", corpus, "--run-dir", str(run), *TINY, *extra])


def fails(argv, capsys) -> str:
    """Runs the command line, which must exit non-zero with one line of error; returns that line."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def steps_logged(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights_finite(checkpoint: Path) -> bool:
    from safetensors.torch import load_file

    return all(bool(torch.isfinite(t).all()) for t in load_file(checkpoint / "model.safetensors").values())


# 1. NaN ------------------------------------------------------------------------------------------------------
def test_a_diverging_run_stops_with_a_clear_error_and_never_checkpoints_garbage(tmp_path, corpus, capsys):
    run = tmp_path / "nan"
    line = fails(["train", "--data", corpus, "--run-dir", str(run), *TINY, "--lr", "1e6", "--steps", "40",
                  "--checkpoint-every", "1", "--max-bad-steps", "2"], capsys)
    assert line.startswith("error: training diverged") and "Lower --lr (now 1e+06)" in line
    for checkpoint in (run / "checkpoints").glob("step-*"):
        assert weights_finite(checkpoint)
    assert latest_checkpoint(run) is None or weights_finite(latest_checkpoint(run))
    if (run / "metrics.jsonl").exists():
        assert all(json.loads(line) is not None for line in (run / "metrics.jsonl").read_text().splitlines())


def test_eval_refuses_weights_that_are_not_finite_and_json_output_is_strict(tmp_path, corpus, capsys):
    from conftest import tiny_model

    model = tiny_model(num_tokens=256)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    save_checkpoint(tmp_path / "bad", 1, model, state={})
    line = fails(["eval", "--checkpoint", str(tmp_path / "bad"), "--eval-data", corpus], capsys)
    assert "holds NaN or infinite values" in line and "model.safetensors" in line
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "bad")
    from memorizing_transformers_pytorch.plots import save_result as save

    save({"bits_per_byte": {"with_memory": float("nan"), "without_memory": 1.0}, "by_memory_size": {},
          "trained_memory_size": 0}, tmp_path / "out")
    text = (tmp_path / "out" / "eval.json").read_text()
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}"))["bits_per_byte"] == {
        "with_memory": None, "without_memory": 1.0}


def test_a_damaged_optimizer_state_is_refused_on_resume(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "2")
    trainer_pt = latest_checkpoint(run) / "trainer.pt"
    state = torch.load(trainer_pt, weights_only=True)
    moments = next(iter(state["optimizer"]["state"].values()))
    moments["exp_avg"].fill_(float("nan"))
    torch.save(state, trainer_pt)
    assert "optimizer state holds NaN" in fails(["train", "--run-dir", str(run), "--steps", "4", "--resume"], capsys)
    torch.save({}, trainer_pt)
    assert "trainer.pt: no optimizer and scheduler state" in fails(
        ["train", "--run-dir", str(run), "--steps", "4", "--resume"], capsys)


# 2. and 3. one run per folder ---------------------------------------------------------------------------------
def test_training_into_a_folder_that_holds_a_run_is_refused_unless_resume_or_overwrite(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "3")
    before = (run / "metrics.jsonl").read_text()
    line = fails(["train", "--data", corpus, "--run-dir", str(run), *TINY, "--steps", "2"], capsys)
    assert "already holds a run" in line and "--resume" in line and "--overwrite" in line
    assert (run / "metrics.jsonl").read_text() == before and latest_checkpoint(run).name == "step-0000003"
    train(corpus, run, "--steps", "2", "--overwrite")
    assert latest_checkpoint(run).name == "step-0000002" and steps_logged(run)[-1] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000002"]


def test_checkpoint_retention_is_by_step_and_never_deletes_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step-0000100", "step-0000200", "step-0000030", "step-00000005"):
        (root / name).mkdir(parents=True)
    remove_old_checkpoints(root, 2, newest=root / "step-0000030")  # 100 and 200 are the highest steps
    assert sorted(p.name for p in root.iterdir()) == ["step-0000030", "step-0000100", "step-0000200"]
    remove_old_checkpoints(root, 1, newest=root / "step-0000030")
    assert sorted(p.name for p in root.iterdir()) == ["step-0000030", "step-0000200"]
    (root / "step-0000300").mkdir()
    remove_old_checkpoints(root, 1, newest=root / "step-0000300")
    assert [p.name for p in root.iterdir()] == ["step-0000300"]


def test_a_run_folder_in_use_is_refused_naming_the_holders_pid(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from memorizing_transformers_pytorch.run_folder "
                               "import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); "
                               "time.sleep(60)", str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "held"
        line = fails(["train", "--data", corpus, "--run-dir", str(run), *TINY, "--steps", "1"], capsys)
        assert f"in use by another run (pid {holder.pid})" in line
    finally:
        holder.kill()
        holder.wait()
    train(corpus, run, "--steps", "1")  # the lock died with its holder
    with RunLock(run):
        with pytest.raises(RunFolderError, match="in use by another run"):
            claim_run_folder(run, resume=True, overwrite=False)
    with pytest.raises(RunFolderError, match="give one of them"):
        claim_run_folder(run, resume=True, overwrite=True)


# 4. --resume continues exactly ---------------------------------------------------------------------------------
def test_resume_takes_the_runs_own_settings_and_refuses_contradicting_flags(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "2", "--lr", "0.002", "--warmup-steps", "3")
    main(["train", "--run-dir", str(run), "--steps", "3", "--resume"])  # no --data, --seq-len, --lr: the run's
    saved = json.loads((latest_checkpoint(run) / "train_config.json").read_text())
    assert (saved["steps"], saved["seq_len"], saved["lr"], saved["warmup_steps"], saved["data"]) == (3, 16, 0.002, 3,
                                                                                                   corpus)
    line = fails(["train", "--run-dir", str(run), "--steps", "4", "--lr", "0.1", "--resume"], capsys)
    assert "--lr 0.1 contradicts the run's lr=0.002" in line and "train_config.json" in line
    line = fails(["train", "--run-dir", str(run), "--steps", "4", "--data", "stdlib", "--resume"], capsys)
    assert "--data 'stdlib' contradicts the run's data=" in line
    line = fails(["train", "--run-dir", str(run), "--steps", "4", "--dim", "64", "--resume"], capsys)
    assert "--dim 64 contradicts the run's dim=32" in line and "config.json" in line
    line = fails(["train", "--run-dir", str(run), "--steps", "4", "--preset", "small", "--resume"], capsys)
    assert "contradicts the run's" in line
    assert json.loads((latest_checkpoint(run) / "train_config.json").read_text())["lr"] == 0.002  # untouched
    line = fails(["train", "--run-dir", str(tmp_path / "nothing"), "--resume"], capsys)
    assert "no checkpoint in" in line


def test_the_readme_preset_run_resumes_as_printed(tmp_path, corpus, capsys):
    run = tmp_path / "s"
    main(["train", "--preset", "small", "--data", corpus, "--run-dir", str(run), "--steps", "2", "--seq-len", "16",
          "--log-every", "1"])
    main(["train", "--preset", "small", "--data", corpus, "--run-dir", str(run), "--steps", "3", "--resume"])
    assert steps_logged(run) == [1, 2, 3]


# 5. metrics ----------------------------------------------------------------------------------------------------
def test_resume_cuts_metrics_back_to_the_checkpoint_and_drops_a_half_written_line(tmp_path, corpus):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "4", "--log-every", "1", "--checkpoint-every", "2")
    # as if the run had died after logging step 4 but before its checkpoint, mid-way through a line
    import shutil

    shutil.rmtree(latest_checkpoint(run))
    (run / "checkpoints" / "latest").write_text("step-0000002\n")
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"step": 5, "lo')
    main(["train", "--run-dir", str(run), "--steps", "5", "--resume"])
    assert steps_logged(run) == [1, 2, 3, 4, 5]
    assert truncate_metrics(run, 3) == 2 and steps_logged(run) == [1, 2, 3]


def test_a_full_disk_is_one_line_naming_the_metrics_file_and_leaves_no_half_line(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    with pytest.raises(OSError, match=r"metrics.jsonl: could not write a metrics line .*then --resume"):
        append_metrics(tmp_path, {"step": 1, "loss": float("nan")})
    target = tmp_path / "real"
    target.mkdir()
    append_metrics(target, {"step": 1, "loss": float("nan")})
    assert json.loads((target / "metrics.jsonl").read_text()) == {"step": 1, "loss": None}


# 6. latest -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"../../other/checkpoints/step-0000002\n", b"/tmp/step-0000002\n",
                                     b"\xff\xfe\x00garbage"])
def test_latest_is_confined_to_its_run_folder(tmp_path, corpus, content, capsys):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")
    (run / "checkpoints" / "latest").write_bytes(content)
    with pytest.raises(CheckpointError, match=r"checkpoints/latest: "):
        latest_checkpoint(run)
    line = fails(["eval", "--checkpoint", str(run)], capsys)
    assert "checkpoints/latest" in line


# 7. interruption -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signal_number, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_save_a_checkpoint_and_say_how_to_resume(tmp_path, corpus, signal_number, code):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "memorizing_transformers_pytorch", "train", "--data", corpus, "--run-dir",
               str(run), *TINY, "--steps", "100000", "--log-every", "1", "--checkpoint-every", "0", "--threads", "1"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not ((run / "metrics.jsonl").exists() and len(steps_logged(run)) >= 3):
        time.sleep(0.1)
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert "Traceback" not in err and "Continue with: memorizing-transformers train --run-dir" in err
    stopped = latest_checkpoint(run)
    step = json.loads((stopped / "state.json").read_text())["step"]
    assert steps_logged(run)[-1] == step  # the last line logged is the checkpoint's step
    main(["train", "--run-dir", str(run), "--steps", str(step + 2), "--resume"])
    logged = steps_logged(run)
    assert logged == sorted(set(logged)) and logged[-1] == step + 2


# 8. one-line errors --------------------------------------------------------------------------------------------
def test_bad_devices_and_bad_checkpoint_fields_are_one_line(tmp_path, corpus, capsys):
    if not torch.cuda.is_available():
        line = fails(["train", "--data", corpus, "--run-dir", str(tmp_path / "c"), *TINY, "--device", "cuda"], capsys)
        assert "--device cuda: this torch build has no CUDA" in line
        assert "no CUDA" in fails(["generate", "--checkpoint", str(tmp_path), "--device", "cuda"], capsys)
    assert "not a torch device" in fails(["eval", "--checkpoint", str(tmp_path), "--device", "gpu0"], capsys)
    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")
    state_path = latest_checkpoint(run) / "state.json"
    state = json.loads(state_path.read_text())
    for bad in ({**state, "step": "one"}, {k: v for k, v in state.items() if k != "step"}):
        state_path.write_text(json.dumps(bad))
        line = fails(["train", "--run-dir", str(run), "--steps", "3", "--resume"], capsys)
        assert "state.json: 'step' must be an integer" in line
    state_path.write_text(json.dumps({**state, "data": 7}))
    assert "state.json: 'data' must be an object" in fails(["train", "--run-dir", str(run), "--steps", "3", "--resume"],
                                                           capsys)
    (tmp_path / "t.json").write_text(json.dumps({"steps": "many"}))
    assert "steps must be a int, got 'many'" in fails(["train", "--train-config", str(tmp_path / "t.json"),
                                                       "--run-dir", str(tmp_path / "x")], capsys)


# 10. progress --------------------------------------------------------------------------------------------------
def test_training_without_a_terminal_prints_progress_lines(tmp_path, corpus):
    command = [sys.executable, "-m", "memorizing_transformers_pytorch", "train", "--data", corpus, "--run-dir",
               str(tmp_path / "run"), *TINY, "--steps", "6", "--log-every", "1", "--progress-every", "0.0001",
               "--threads", "1"]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 6/6 (100%): loss " in done.stderr and "min left" in done.stderr


def test_generation_reports_progress_while_reading_and_gives_the_same_tokens():
    from conftest import tiny_model

    model = tiny_model(num_tokens=64, xl_memory_layers=(2, 3), xl_max_memories=8)
    prompt = torch.randint(3, 64, (1, 200))
    plain = model.generate(prompt, max_new_tokens=5, seq_len=16, temperature=0.0)
    seen = []
    reported = model.generate(prompt, max_new_tokens=5, seq_len=16, temperature=0.0,
                              on_read=lambda read, total: seen.append((read, total)))
    assert torch.equal(plain.tokens, reported.tokens)
    assert seen == [(128, 200), (200, 200)]


def test_eval_prints_progress_without_a_terminal(tmp_path, corpus, capsys, monkeypatch):
    from memorizing_transformers_pytorch import evaluate

    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")
    monkeypatch.setattr(evaluate, "PROGRESS_SECONDS", 0.0)
    main(["eval", "--checkpoint", str(run), "--eval-data", corpus, "--split", "train", "--memory-sizes", "0,64",
          "--max-docs", "2"])
    assert "[eval] memory 64: " in capsys.readouterr().err and "tokens (" in capsys.readouterr().err + " tokens ("


# 9. your own data ----------------------------------------------------------------------------------------------
def test_your_own_folder_evaluates_with_split_all_and_binary_files_are_skipped(tmp_path, corpus, capsys):
    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")
    from memorizing_transformers_pytorch.data import _split_of

    mine = tmp_path / "mine"
    mine.mkdir()
    names = [name for name in (f"notes{i}.txt" for i in range(100)) if _split_of(name) == "train"][:5]
    for i, name in enumerate(names):  # 5 files, none of them in the test split
        (mine / name).write_text(f"note {i}: " + "memory helps with long documents. " * 20)
    (mine / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" + bytes(range(256)) * 4)
    line = fails(["eval", "--checkpoint", str(run), "--eval-data", str(mine), "--memory-sizes", "0,64"], capsys)
    assert "no non-empty documents in its 'test' split" in line and "90% train" in line and "--split all" in line
    main(["eval", "--checkpoint", str(run), "--eval-data", str(mine), "--split", "all", "--memory-sizes", "0,64",
          "--output", str(tmp_path / "out")])
    printed = capsys.readouterr()
    assert "skipped 1 binary file(s)" in printed.err
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["documents"] == 5


# 11. labels ----------------------------------------------------------------------------------------------------
def test_the_second_checkpoint_is_labelled_for_what_it_is_and_gains_say_lower_or_higher(tmp_path, corpus, capsys):
    train(corpus, tmp_path / "a", "--steps", "1")
    train(corpus, tmp_path / "b", "--steps", "1")
    train(corpus, tmp_path / "off", "--steps", "1", "--no-knn-memory")
    main(["eval", "--checkpoint", str(tmp_path / "a"), "--baseline-checkpoint", str(tmp_path / "b"), "--eval-data",
          corpus, "--split", "train", "--max-docs", "2", "--memory-sizes", "0,64"])
    out = capsys.readouterr().out
    assert "second checkpoint (kNN memory off)" in out and "XL only" not in out
    assert "% lower bits per byte than off" in out or "% higher bits per byte than off" in out
    assert (tmp_path / "a" / "eval.json").is_file()  # --output defaults to the folder named
    main(["eval", "--checkpoint", str(tmp_path / "a"), "--baseline-checkpoint", str(tmp_path / "off"), "--eval-data",
          corpus, "--split", "train", "--max-docs", "2", "--memory-sizes", "0,64"])
    assert "baseline (trained with kNN memory off)" in capsys.readouterr().out


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, corpus, capsys,
                                                                                       monkeypatch):
    from safetensors import SafetensorError

    from memorizing_transformers_pytorch import checkpoint

    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(checkpoint, "save_file", full)
    line = fails(["train", "--run-dir", str(run), "--steps", "2", "--resume"], capsys)
    assert "could not write the checkpoint of step 2" in line and "StorageFull" in line and "--resume" in line
    assert latest_checkpoint(run).name == "step-0000001" and not list((run / "checkpoints").glob(".step-*"))


def test_a_jsonl_field_that_is_not_text_is_one_line(tmp_path, capsys):
    (tmp_path / "data.jsonl").write_text('{"text": "fine"}\n{"text": 42}\n')
    line = fails(["train", "--data", f"jsonl:{tmp_path / 'data.jsonl'}", "--run-dir", str(tmp_path / "r"), *TINY,
                  "--steps", "1"], capsys)
    assert "line 2: field 'text' must hold text, got int" in line


def test_temporaries_of_killed_writers_are_cleaned_up_and_a_lost_race_is_one_line(tmp_path):
    from memorizing_transformers_pytorch.shards import OWNER, remove_stale_temporaries

    folder = tmp_path / "shards"
    dead = tmp_path / ".shards.abc123"
    dead.mkdir()
    (dead / OWNER).write_text("999999999\n")  # no such process
    alive = tmp_path / ".shards.def456"
    alive.mkdir()
    (alive / OWNER).write_text(f"{os.getpid()}\n")
    old = tmp_path / ".shards.nopid"
    old.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    remove_stale_temporaries(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".shards.def456"]


def test_prepare_that_loses_a_race_to_another_prepare_keeps_theirs_and_says_so(tmp_path, monkeypatch):
    from memorizing_transformers_pytorch import shards
    from memorizing_transformers_pytorch.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(["def f(x): return x + 1\n" * 20], vocab_size=300)
    folder = tmp_path / "shards"
    real_replace = os.replace

    def other_writer_first(source, target):  # another prepare renames its folder into place just before this one
        if Path(target) == folder:
            folder.mkdir()
            (folder / "meta.json").write_text("{}")
        return real_replace(source, target)

    monkeypatch.setattr(shards.os, "replace", other_writer_first)
    with pytest.raises(FileExistsError, match="written by another process meanwhile"):
        shards.write_shards(folder, [("train", [tokenizer.encode("def f(x): return x")])], tokenizer)
    assert (folder / "meta.json").read_text() == "{}" and sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_a_token_level_shards_run_resumes_as_the_readme_prints_it(tmp_path, capsys):
    corpus = tmp_path / "many"
    corpus.mkdir()
    for i in range(200):  # enough files for every split
        (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * 5)
    corpus = str(corpus)
    tok = tmp_path / "tok"
    main(["tokenizer", "--data", corpus, "--vocab-size", "300", "--out", str(tok / "tokenizer.json")])
    main(["prepare", "--data", corpus, "--tokenizer", str(tok / "tokenizer.json"), "--out", str(tok / "shards")])
    run = tmp_path / "t"
    args = ["train", "--data", f"shards:{tok / 'shards'}", "--preset", "demo", "--run-dir", str(run), "--seq-len", "16",
            "--log-every", "1"]
    main([*args, "--steps", "1"])
    main([*args, "--steps", "2", "--resume"])
    assert steps_logged(run) == [1, 2]
    capsys.readouterr()


def test_bad_rng_bytes_in_a_memory_shard_are_one_line(tmp_path, corpus, capsys):
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    train(corpus, run, "--steps", "1")
    shard = latest_checkpoint(run) / "memories-rank0.safetensors"
    tensors = load_file(shard)
    tensors["rng"] = torch.zeros(7, dtype=torch.uint8)
    save_file(tensors, shard)
    line = fails(["train", "--run-dir", str(run), "--steps", "2", "--resume"], capsys)
    assert "its optimizer, schedule or RNG state does not fit this run" in line


def test_evaluating_documents_with_nothing_to_score_is_a_clear_error():
    import numpy as np
    from conftest import tiny_model

    from memorizing_transformers_pytorch.evaluate import evaluate

    with pytest.raises(ValueError, match="nothing to score"):
        evaluate(tiny_model(num_tokens=256), [np.array([2], dtype=np.uint8)], memory_sizes=[0], seq_len=16,
                 progress=False)


def test_the_plot_does_not_zoom_a_tiny_difference_into_a_steep_one(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from memorizing_transformers_pytorch.plots import plot_eval as plot
    from memorizing_transformers_pytorch.plots import set_visible_range

    fig, ax = plt.subplots()
    set_visible_range(ax, [2.0, 1.9992, None])
    low, high = ax.get_ylim()
    assert high - low >= 0.1 * 0.99 and low < 1.9992 < 2.0 < high  # 0.04% is a sliver of the axis, not all of it
    plt.close(fig)
    path = plot({"by_memory_size": {"0": 2.0, "1024": 1.9992}, "bits_per_byte": {"with_memory": 1.9992}},
                tmp_path / "p.png")
    assert path.stat().st_size > 0
