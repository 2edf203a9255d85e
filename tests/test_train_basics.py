"""The training loop's basics: validation on held-out documents, the gradient norm, TensorBoard events, checkpoint
retention, batches read ahead (errors, shutdown), and resuming from a data position of the older format."""

import json
import math
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from memorizing_transformers_pytorch.checkpoint import latest_checkpoint
from memorizing_transformers_pytorch.cli import main
from memorizing_transformers_pytorch.data import SOS_ID, DocumentStream, load_documents
from memorizing_transformers_pytorch.evaluate import score
from memorizing_transformers_pytorch.train import TrainConfig, Trainer, train

MODEL_FLAGS = ["--seq-len", "16", "--batch-size", "2", "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head",
               "16", "--memorizing-layers", "2", "--max-knn-memories", "64", "--num-retrieved-memories", "4",
               "--xl-max-memories", "16", "--warmup-steps", "1"]


def model_config():
    from test_train import MODEL

    return MODEL


def config(tmp_path, corpus, **overrides):
    values = dict(data=corpus, run_dir=str(tmp_path / "run"), seq_len=16, batch_size=2, steps=6, warmup_steps=2,
                  checkpoint_every=3, log_every=1, lr=3e-3)
    values.update(overrides)
    return TrainConfig(**values)


def records(run) -> list[dict]:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


def add_held_out(corpus, *names):
    """Adds files that the 90 / 5 / 5 split by name puts in the valid (doc79, doc80) or test (doc81) split."""
    for name in names:
        (Path(corpus) / f"{name}.py").write_text("".join(f"def g_{name}_{j}(y):\n    return y * {j}\n" for j in range(12)))
    return corpus


def prefetch_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "prefetch-batches"]


# ---------------------------------------------------------------------------------------------------- validation
def test_validation_logs_the_held_out_loss_and_leaves_training_as_it_was(tmp_path, corpus):
    """Every eval_every steps and at the last: the loss on the valid split's first eval_tokens tokens, with memory,
    the same as evaluate.score gives; training's losses are exactly those of a run without validation."""
    add_held_out(corpus, "doc79", "doc80", "doc81")
    plain = train(model_config(), config(tmp_path / "plain", corpus, steps=5), progress=False)
    summary = train(model_config(), config(tmp_path, corpus, steps=5, eval_every=2, eval_tokens=300), progress=False)
    assert summary["losses"] == plain["losses"]  # same data, RNG and memories: validation changed nothing
    assert summary["model"].training
    validations = [r for r in records(tmp_path / "run") if "val_loss" in r]
    assert [r["step"] for r in validations] == [2, 4, 5] == [v["step"] for v in summary["validations"]]
    assert all(math.isclose(r["val_bpb"], r["val_loss"] / math.log(2)) for r in validations)  # bytes: 1 byte a token
    held_out = load_documents(corpus, "valid")
    assert sum(map(len, held_out)) > 300
    first = []
    for document in held_out:  # the first 300 tokens of the valid split, the last document cut
        first.append(document[: 300 - sum(map(len, first))])
    expected = score(summary["model"], [d for d in first if len(d)], memory_size=None, batch_size=2, seq_len=16)
    assert math.isclose(validations[-1]["val_loss"], expected.bits * math.log(2) / expected.tokens, rel_tol=1e-6)
    assert validations[-1]["val_tokens"] == expected.tokens


def test_validation_falls_back_to_the_test_split_and_data_without_documents_is_a_clear_error(tmp_path, corpus, capsys):
    add_held_out(corpus, "doc81")  # a test split, no valid split
    trainer = Trainer(model_config(), config(tmp_path, corpus, eval_every=1, eval_tokens=50), progress=False)
    assert sum(map(len, trainer.eval_documents)) == 50
    assert np.array_equal(trainer.eval_documents[0], load_documents(corpus, "test")[0][:50])
    with pytest.raises(SystemExit):
        main(["train", "--data", "copy:span=4", "--run-dir", str(tmp_path / "copy"), *MODEL_FLAGS, "--steps", "1",
              "--eval-every", "1"])
    line = capsys.readouterr().err.strip()
    assert line == ("error: --eval-every: no held-out documents to validate on (data source 'copy:span=4' makes its "
                    "own batches; it has no documents to read); train with --eval-every 0")
    with pytest.raises(ValueError, match="eval_tokens must be >= 1"):
        config(tmp_path, corpus, eval_tokens=0)


# --------------------------------------------------------------------------------------- gradient norm, progress
def test_the_gradient_norm_before_clipping_is_logged_and_printed(tmp_path, corpus):
    train(model_config(), config(tmp_path, corpus, steps=3, grad_clip=1e-3), progress=False)
    logged = records(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert all(r["grad_norm"] > 1e-3 for r in logged)  # the norm before clipping, not the clipped one
    trainer = Trainer(model_config(), config(tmp_path / "b", corpus, steps=3), progress=False)
    trainer.step()
    assert float(trainer.grad_norm) > 0
    trainer.stream.close()


def test_the_progress_line_shows_the_gradient_norm_and_the_last_validation(tmp_path, corpus, capsys):
    add_held_out(corpus, "doc79")
    trainer = Trainer(model_config(), config(tmp_path, corpus, steps=2, eval_every=1, eval_tokens=40), progress=False)
    trainer.step_count = 1
    trainer._print_progress({"loss": 1.0, "bits_per_byte": 1.4, "grad_norm": 0.25, "tokens_per_s": 100.0},
                            {"step": 1, "val_loss": 2.0, "val_bpb": 2.9}, 0, 60.0)
    line = capsys.readouterr().err
    assert "loss 1.0000, 1.4000 bits per byte, gradient norm 0.25, 100 tokens/s; validation at step 1: loss " \
           "2.0000, 2.9000 bits per byte; 1.0 min elapsed" in line


# ---------------------------------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_are_written_and_a_resumed_run_replaces_the_steps_after_its_checkpoint(tmp_path, corpus):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    add_held_out(corpus, "doc79")
    cfg = config(tmp_path, corpus, steps=4, checkpoint_every=2, eval_every=2, eval_tokens=64, tensorboard=True)
    train(model_config(), cfg, progress=False)
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step-0000002\n")  # as if it had died after step 2
    train(model_config(), cfg, resume=True, progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/bits_per_byte", "train/lr", "train/grad_norm", "train/tokens_per_s", "val/loss",
            "val/bits_per_byte"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]  # once each: steps 3-4 of the first life dropped
    assert [e.step for e in events.Scalars("val/loss")] == [2, 4]
    logged = {r["step"]: r["loss"] for r in records(tmp_path / "run") if "loss" in r}
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx([logged[s] for s in (1, 2, 3, 4)])
    main(["train", "--data", corpus, "--run-dir", str(tmp_path / "run"), *MODEL_FLAGS, "--steps", "1", "--overwrite"])
    assert not (tmp_path / "run" / "tensorboard").exists()  # --overwrite deletes the run's events too


def test_tensorboard_without_the_package_is_a_one_line_error(tmp_path, corpus, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(SystemExit):
        main(["train", "--data", corpus, "--run-dir", str(tmp_path / "r"), *MODEL_FLAGS, "--steps", "1", "--tensorboard"])
    assert capsys.readouterr().err.strip() == "error: --tensorboard needs the tensorboard package: pip install tensorboard"


# -------------------------------------------------------------------------------------------- resume, retention
def test_validation_and_tensorboard_settings_may_change_on_resume(tmp_path, corpus):
    add_held_out(corpus, "doc79")
    run = tmp_path / "run"
    main(["train", "--data", corpus, "--run-dir", str(run), *MODEL_FLAGS, "--steps", "2", "--log-every", "1"])
    main(["train", "--run-dir", str(run), "--steps", "4", "--resume", "--eval-every", "1", "--eval-tokens", "40",
          *(["--tensorboard"] if _has_tensorboard() else [])])
    saved = json.loads((latest_checkpoint(run) / "train_config.json").read_text())
    assert (saved["eval_every"], saved["eval_tokens"]) == (1, 40)
    assert [r["step"] for r in records(run) if "val_loss" in r] == [3, 4]


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_keep_checkpoints_keeps_the_newest_ones(tmp_path, corpus):
    main(["train", "--data", corpus, "--run-dir", str(tmp_path / "one"), *MODEL_FLAGS, "--steps", "3",
          "--checkpoint-every", "1", "--keep-checkpoints", "1"])
    assert sorted(p.name for p in (tmp_path / "one" / "checkpoints").glob("step-*")) == ["step-0000003"]
    main(["train", "--data", corpus, "--run-dir", str(tmp_path / "two"), *MODEL_FLAGS, "--steps", "3",
          "--checkpoint-every", "1"])
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000003"]


# --------------------------------------------------------------------------------------------- data read ahead
def test_an_error_while_reading_batches_ahead_stops_training_with_that_error_and_no_thread_left(tmp_path, corpus,
                                                                                                monkeypatch):
    read = DocumentStream.next_batch
    calls = []

    def fails_at_the_fifth(self):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk read error in the data")
        return read(self)

    monkeypatch.setattr(DocumentStream, "next_batch", fails_at_the_fifth)
    trainer = Trainer(model_config(), config(tmp_path, corpus, steps=10, checkpoint_every=0), progress=False)
    with pytest.raises(OSError, match="disk read error in the data"):
        trainer.run()
    assert trainer.step_count == 4 and not prefetch_threads()
    assert trainer.stream.state_dict()["documents_started"] == trainer.stream.stream.state_dict()["documents_started"]


def test_a_checkpoint_saves_the_position_of_the_batches_trained_on_not_those_read_ahead(tmp_path, corpus):
    trainer = Trainer(model_config(), config(tmp_path, corpus), progress=False)
    plain = DocumentStream(load_documents(corpus, "train"), batch_size=2, seq_len=16, repeat=True, seed=0)
    for _ in range(3):
        trainer.step()
        plain.next_batch()
    trainer.save()
    saved = json.loads((latest_checkpoint(tmp_path / "run") / "state.json").read_text())["data"]
    assert saved == plain.state_dict()
    trainer.stream.close()


# ------------------------------------------------------------------------------------- data state, older format
def older_format(state: dict, documents) -> dict:
    """A data state as the stream wrote it before positions were (document, offset): each row's unread tokens."""
    pending = []
    for index, offset in state["rows"]:
        if index < 0:
            pending.append([])
        else:
            document = np.concatenate(([SOS_ID], documents[index])).astype(np.int64)
            pending.append(document[offset:].tolist())
    return {k: v for k, v in state.items() if k not in ("rows", "documents")} | {"pending": pending}


def test_a_checkpoint_with_the_older_data_state_resumes_exactly_or_says_it_cannot(tmp_path, corpus, capsys):
    full = train(model_config(), config(tmp_path / "a", corpus), progress=False)["losses"]
    cfg = config(tmp_path / "b", corpus)
    train(model_config(), cfg, progress=False)
    step3 = tmp_path / "b" / "run" / "checkpoints" / "step-0000003"
    (step3.parent / "latest").write_text("step-0000003\n")
    state = json.loads((step3 / "state.json").read_text())
    old = {**state, "data": older_format(state["data"], load_documents(corpus, "train"))}
    (step3 / "state.json").write_text(json.dumps(old, indent=2))
    resumed = train(model_config(), cfg, resume=True, progress=False)["losses"]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full[3:]), rtol=1e-5, atol=1e-6)
    assert "rows" in json.loads((latest_checkpoint(tmp_path / "b" / "run") / "state.json").read_text())["data"]

    old["data"]["pending"][0] = [7] * 2000  # ends no document of this data
    (step3 / "state.json").write_text(json.dumps(old))
    (step3.parent / "latest").write_text("step-0000003\n")
    with pytest.raises(SystemExit):
        main(["train", "--run-dir", str(tmp_path / "b" / "run"), "--steps", "6", "--resume"])
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "state.json: its data position does not fit the data" in line
    assert "the data position cannot be restored: start a new run (--init-from takes its weights)" in line
