"""Corrupted or mismatched checkpoints: every command that loads one fails with one line naming the file."""

import json

import pytest

from experiments.__main__ import add_commands
from memorizing_transformers_pytorch.cli import main as core_main

MODEL_FLAGS = ["--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2",
               "--max-knn-memories", "64", "--num-retrieved-memories", "4", "--xl-max-memories", "16"]


def main(argv):
    core_main(argv, extend=add_commands)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(20)))
    run = root / "run"
    main(["train", "--data", str(corpus), "--run-dir", str(run), "--steps", "2", "--seq-len", "16",
          "--checkpoint-every", "0", *MODEL_FLAGS])
    return corpus, run


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def corrupt_json(path):
    path.write_text('{"dim": 32,')


def another_model(path):
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "dim": 48}))


CORRUPTIONS = {
    "truncated weights": ("model.safetensors", truncate),
    "bad config JSON": ("config.json", corrupt_json),
    "another model's config": ("config.json", another_model),
    "bad state JSON": ("state.json", corrupt_json),
    "dangling latest": ("../latest", lambda path: path.write_text("step-0009999\n")),
    "truncated memory shard": ("memories-rank0.safetensors", truncate),
    "truncated trainer state": ("trainer.pt", truncate),
}
# which files each command reads: the others are not its business
READS = {
    "resume": set(CORRUPTIONS),
    "init-from": {"truncated weights", "bad config JSON", "another model's config", "dangling latest"},
    "eval": {"truncated weights", "bad config JSON", "another model's config", "bad state JSON", "dangling latest"},
    "generate": {"truncated weights", "bad config JSON", "another model's config", "bad state JSON", "dangling latest"},
    "names": {"truncated weights", "bad config JSON", "another model's config", "bad state JSON", "dangling latest"},
    "recall": {"truncated weights", "bad config JSON", "another model's config", "bad state JSON", "dangling latest"},
}
CASES = [(command, corruption) for command, kinds in READS.items() for corruption in CORRUPTIONS if corruption in kinds]


@pytest.mark.parametrize("command, corruption", CASES)
def test_a_bad_checkpoint_is_a_one_line_error_naming_the_file(trained, tmp_path, capsys, command, corruption):
    import shutil

    corpus, source = trained
    run = tmp_path / "run"
    shutil.copytree(source, run)
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    name, damage = CORRUPTIONS[corruption]
    damage(checkpoint / name)
    capsys.readouterr()
    argv = {
        "resume": ["train", "--data", str(corpus), "--run-dir", str(run), "--steps", "3", "--seq-len", "16", "--resume",
                   *MODEL_FLAGS],
        "init-from": ["train", "--data", str(corpus), "--run-dir", str(tmp_path / "new"), "--steps", "1",
                      "--seq-len", "16", "--init-from", str(run), *MODEL_FLAGS],
        "eval": ["eval", "--checkpoint", str(run), "--max-docs", "1", "--memory-sizes", "0"],
        "generate": ["generate", "--checkpoint", str(run), "--prompt", "def ", "--max-new-tokens", "2"],
        "names": ["names", "--checkpoint", str(run), "--max-docs", "1", "--memory-sizes", "0"],
        "recall": ["recall", "--checkpoint", str(run), "--distances", "88", "--documents", "1", "--memory-sizes", "0"],
    }[command]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert name.removeprefix("../") in err, err


def test_a_checkpoint_with_the_older_token_shift_is_a_clear_error(tmp_path):
    """Before the token shift mixed the layer's inputs, it was per-token embeddings (``key_shift_emb.*``): such
    weights cannot be converted, and loading them says so."""
    import torch
    from conftest import tiny_model

    from memorizing_transformers_pytorch.checkpoint import CheckpointError, load_model, save_checkpoint

    model = tiny_model(token_shift=2)
    save_checkpoint(tmp_path / "old", 1, model, state={})
    from safetensors.torch import load_file, save_file

    weights_file = next((tmp_path / "old").rglob("model.safetensors"))

    weights = {k: v for k, v in load_file(weights_file).items() if ".shift." not in k}
    weights |= {f"key_shift_emb.{i}.weight": torch.zeros(32, model.config.dim) for i in range(2)}
    save_file(weights, weights_file)
    with pytest.raises(CheckpointError, match="token_shift"):
        load_model(weights_file.parent)
