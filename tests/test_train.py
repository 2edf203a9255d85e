"""Training loop, checkpoints (round trip, atomicity), exact resume, evaluation and the CLI."""

import json
import math
from pathlib import Path

import pytest
import torch

from memorizing_transformers_pytorch import MemorizingTransformerConfig
from memorizing_transformers_pytorch.checkpoint import latest_checkpoint, load_model, save_checkpoint
from memorizing_transformers_pytorch.cli import main
from memorizing_transformers_pytorch.evaluate import evaluate
from memorizing_transformers_pytorch.train import TrainConfig, train

MODEL = MemorizingTransformerConfig(
    num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,), max_knn_memories=64,
    num_retrieved_memories=4, xl_max_memories=16, pad_id=0, clear_memories_on_sos_token_id=2,
)


def config(tmp_path, corpus, **overrides):
    values = dict(data=corpus, run_dir=str(tmp_path / "run"), seq_len=16, batch_size=2, steps=6, warmup_steps=2,
                  checkpoint_every=3, log_every=1, lr=3e-3)
    values.update(overrides)
    return TrainConfig(**values)


def test_training_lowers_the_loss_and_logs_metrics(tmp_path, corpus):
    summary = train(MODEL, config(tmp_path, corpus, steps=30, checkpoint_every=0), progress=False)
    losses = summary["losses"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 30 and {"loss", "bits_per_byte", "lr", "tokens_per_s"} <= set(lines[0])
    assert math.isclose(lines[0]["bits_per_byte"], lines[0]["loss"] / math.log(2))


@pytest.mark.parametrize("gate", ["sigmoid", "mlp"])
def test_weight_decay_spares_norms_biases_gates_and_temperatures(tmp_path, corpus, gate):
    from memorizing_transformers_pytorch.train import Trainer

    model_config = MemorizingTransformerConfig(**{**MODEL.to_dict(), "knn_gate": gate, "token_shift": 2})
    trainer = Trainer(model_config, config(tmp_path, corpus, weight_decay=0.1), progress=False)
    decayed = {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    names = {name for name, p in trainer.model.named_parameters() if id(p) in decayed}
    assert names == {name for name, p in trainer.model.named_parameters()
                     if p.ndim == 2 and ".gate." not in name}  # every matrix but the gate's, nothing else


@pytest.mark.parametrize("token_shift", [0, 3])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, corpus, token_shift):
    """(With token_shift, the XL caches' token ids are saved and restored too.)"""
    model = MemorizingTransformerConfig(**{**MODEL.to_dict(), "token_shift": token_shift})
    full = train(model, config(tmp_path / "a", corpus), progress=False)["losses"]
    cfg = config(tmp_path / "b", corpus)
    train(model, cfg, progress=False)
    checkpoints = tmp_path / "b" / "run" / "checkpoints"
    (checkpoints / "latest").write_text("step-0000003\n")  # as if the run had died after step 3
    resumed = train(model, cfg, resume=True, progress=False)["losses"]
    assert len(resumed) == 3
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full[3:]), rtol=1e-5, atol=1e-6)


def test_resume_refuses_a_different_model(tmp_path, corpus):
    cfg = config(tmp_path, corpus, steps=3)
    train(MODEL, cfg, progress=False)
    other = MemorizingTransformerConfig(**{**MODEL.to_dict(), "dim": 48})
    with pytest.raises(ValueError, match="differs"):
        train(other, cfg, resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        train(MODEL, config(tmp_path / "none", corpus), resume=True, progress=False)


def test_checkpoint_round_trip_is_exact(tmp_path, corpus):
    train(MODEL, config(tmp_path, corpus, steps=3), progress=False)
    model = load_model(tmp_path / "run")
    again = load_model(latest_checkpoint(tmp_path / "run"))
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert model.config == MODEL


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    from memorizing_transformers_pytorch import MemorizingTransformer
    from memorizing_transformers_pytorch import checkpoint as ckpt

    model = MemorizingTransformer(MODEL)
    first = save_checkpoint(tmp_path, 1, model, state={})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 2, model, state={})
    assert latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-0000001"]
    load_model(tmp_path)  # still loads


def test_evaluation_reports_memory_on_off_and_sizes(tmp_path, corpus):
    train(MODEL, config(tmp_path, corpus, steps=3), progress=False)
    model = load_model(tmp_path / "run")
    from memorizing_transformers_pytorch.data import load_documents

    documents = load_documents(corpus, "train")[:3]
    result = evaluate(model, documents, memory_sizes=(0, 16, 64), seq_len=16, progress=False)
    assert set(result["bits_per_byte"]) == {"with_memory", "without_memory"}
    assert set(result["by_memory_size"]) == {"0", "16", "64"}
    assert result["bits_per_byte"]["with_memory"] == result["by_memory_size"]["64"]
    assert result["bits_per_byte"]["without_memory"] == result["by_memory_size"]["0"]


def test_cli_train_then_eval_writes_json_and_plot(tmp_path, corpus, capsys):
    run = str(tmp_path / "cli")
    main(["train", "--data", corpus, "--run-dir", run, "--steps", "2", "--seq-len", "16", "--dim", "32", "--depth", "2",
          "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2", "--max-knn-memories", "64",
          "--num-retrieved-memories", "4", "--xl-max-memories", "16"])
    main(["eval", "--checkpoint", run, "--split", "train", "--memory-sizes", "0,64", "--max-docs", "2"])
    out = capsys.readouterr().out
    assert "with memory" in out and "memory off" in out
    result = json.loads((Path(run) / "eval.json").read_text())
    assert set(result["bits_per_byte"]) == {"with_memory", "without_memory"}
    assert (Path(run) / "eval.png").stat().st_size > 0


def test_cli_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(tmp_path / "missing"), "--run-dir", str(tmp_path / "r"), "--steps", "1"])
    assert "missing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--memorizing-layers", "9", "--run-dir", str(tmp_path / "r")])
    assert "memorizing_layers" in capsys.readouterr().err


def test_cli_generate_streams_text(tmp_path, corpus, capsys):
    run = str(tmp_path / "gen")
    main(["train", "--data", corpus, "--run-dir", run, "--steps", "2", "--seq-len", "16", "--dim", "32", "--depth", "2",
          "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2", "--max-knn-memories", "64",
          "--num-retrieved-memories", "4", "--xl-max-memories", "16"])
    context = tmp_path / "context.py"
    context.write_text("def alpha():\n    return 1\n" * 10)
    capsys.readouterr()
    main(["generate", "--checkpoint", run, "--prompt", "def ", "--context-file", str(context),
          "--max-new-tokens", "20", "--temperature", "0"])
    captured = capsys.readouterr()
    assert captured.out.startswith("def ")
    assert "20 generated" in captured.err and "kNN memory holds [64]" in captured.err
    main(["generate", "--checkpoint", run, "--prompt", "def ", "--context-file", str(context),
          "--max-new-tokens", "5", "--temperature", "0", "--memory-size", "0"])
    assert "kNN memory off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", run, "--prompt-file", str(tmp_path / "nope.txt")])
    assert "nope.txt" in capsys.readouterr().err


def test_cli_reads_configs_from_json_and_reports_bad_files(tmp_path, corpus, capsys):
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({**MODEL.to_dict(), "memorizing_layers": [2]}))
    train_json = tmp_path / "train.json"
    train_json.write_text(json.dumps({"data": corpus, "run_dir": str(tmp_path / "j"), "steps": 1, "seq_len": 16}))
    main(["train", "--model-config", str(model_json), "--train-config", str(train_json)])
    assert load_model(tmp_path / "j").config == MODEL
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SystemExit):
        main(["train", "--model-config", str(tmp_path / "bad.json")])
    assert "bad.json" in capsys.readouterr().err


def test_training_with_memory_off_keeps_no_memories(tmp_path, corpus):
    train(MODEL, config(tmp_path, corpus, steps=2, knn_memory=False), progress=False)
    from safetensors.torch import load_file

    memories = load_file(latest_checkpoint(tmp_path / "run") / "memories-rank0.safetensors")
    assert not any(name.startswith("knn.") for name in memories)


def test_init_from_starts_with_the_weights_of_another_run_and_refuses_a_different_model(tmp_path, corpus):
    first = train(MODEL, config(tmp_path, corpus, run_dir=str(tmp_path / "first"), steps=3), progress=False)
    trained = {k: v.clone() for k, v in first["model"].state_dict().items()}
    second = train(MODEL, config(tmp_path, corpus, run_dir=str(tmp_path / "second"), steps=1, lr=1e-12,
                                 warmup_steps=0, init_from=str(tmp_path / "first")), progress=False)
    for name, value in second["model"].state_dict().items():  # one step at lr ~0 moves nothing measurable
        torch.testing.assert_close(value, trained[name], atol=1e-6, rtol=0)
    fresh = train(MODEL, config(tmp_path, corpus, run_dir=str(tmp_path / "fresh"), steps=1, lr=1e-12,
                                warmup_steps=0), progress=False)
    assert not torch.equal(fresh["model"].to_logits.weight, trained["to_logits.weight"])
    searched_otherwise = MemorizingTransformerConfig(**{**MODEL.to_dict(), "max_knn_memories": 2 * MODEL.max_knn_memories,
                                                        "num_retrieved_memories": 2})
    train(searched_otherwise, config(tmp_path, corpus, run_dir=str(tmp_path / "k2"), steps=1,
                                     init_from=str(tmp_path / "first")), progress=False)  # same weights: allowed
    other = MemorizingTransformerConfig(**{**MODEL.to_dict(), "dim": 48})
    with pytest.raises(ValueError, match="init-from"):
        train(other, config(tmp_path, corpus, run_dir=str(tmp_path / "third"), init_from=str(tmp_path / "first")),
              progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(MODEL, config(tmp_path, corpus, run_dir=str(tmp_path / "fourth"), init_from=str(tmp_path / "none")),
              progress=False)


def test_cli_reports_bad_input_in_one_line_but_lets_programming_errors_raise(tmp_path, corpus, capsys, monkeypatch):
    """A user's mistake (here a config value of the wrong type) is one line and exit code 2; a bug (a TypeError
    inside a command) keeps its traceback instead of being printed as if it were bad input."""
    model_json = tmp_path / "model.json"
    model_json.write_text(json.dumps({"dim": "wide"}))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", corpus, "--run-dir", str(tmp_path / "r"), "--steps", "1", "--model-config", str(model_json)])
    assert exit_info.value.code == 2 and "dim must be an int" in capsys.readouterr().err

    from memorizing_transformers_pytorch import cli

    def buggy(args):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(cli, "cmd_eval", buggy)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["eval", "--checkpoint", str(tmp_path)])


def test_evaluation_progress_in_a_log_file_is_a_line_at_start_and_end(capsys):
    from memorizing_transformers_pytorch.evaluate import bits_per_byte
    from memorizing_transformers_pytorch.model import MemorizingTransformer

    model = MemorizingTransformer(MODEL)
    documents = [torch.randint(3, 256, (40,)).numpy() for _ in range(2)]
    bits_per_byte(model, documents, memory_size=64, seq_len=16, progress=True, description="memory 64")  # not a tty
    err = capsys.readouterr().err
    assert "[eval] memory 64: 82 tokens" in err and "[eval] memory 64: done in" in err
    bits_per_byte(model, documents, memory_size=64, seq_len=16, progress=False)
    assert capsys.readouterr().err == ""
