"""Passkey retrieval: documents whose answer is known, the data source, and the command."""

import json

import numpy as np
import pytest
from conftest import tiny_model

from experiments.__main__ import add_commands
from experiments.passkey import PasskeyTask, evaluate_passkey, passkey_document
from experiments.passkey.task import FILLER, QUESTION
from memorizing_transformers_pytorch.cli import main as core_main
from memorizing_transformers_pytorch.data import load_documents


def main(argv):
    core_main(argv, extend=add_commands)


@pytest.mark.parametrize("length", [300, 1024, 65536])
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_document_hides_the_key_at_the_depth_and_asks_for_it_at_the_end(length, depth):
    doc = passkey_document(length, depth, np.random.default_rng(length), digits=5)
    text = doc.tokens.tobytes()
    key = text[doc.key_start : doc.key_start + 5]
    assert key.isdigit() and len(key) == 5 and key[:1] != b"0"
    assert text[doc.answer_start : doc.answer_start + 5] == key and text.endswith(QUESTION + key + b".")
    assert text.count(b"The pass key is " + key + b". Remember it. " + key + b" is the pass key. ") == 1
    assert abs(len(text) - length) <= max(len(s) for s in FILLER)
    # the statement sits after `depth` of the filler (to the sentence)
    statement = len(b"The pass key is 12345. Remember it. 12345 is the pass key. ")
    filler = len(text) - statement - len(QUESTION) - len(b"12345.")
    assert abs(doc.key_start - len(b"The pass key is ") - depth * filler) <= 2 * max(len(s) for s in FILLER)
    assert text.count(key) == 3


def test_passkey_source_is_deterministic_and_its_splits_differ():
    train = load_documents("passkey:documents=20,min_length=300,max_length=900", "train")
    again = load_documents("passkey:documents=20,min_length=300,max_length=900", "train")
    valid = load_documents("passkey:documents=20,min_length=300,max_length=900", "valid")
    assert len(train) == 20 and all(np.array_equal(a, b) for a, b in zip(train, again))
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(train, valid))
    assert all(250 <= len(doc) <= 950 for doc in train)


@pytest.mark.parametrize("spec, message", [("passkey:min_length=100", "min_length"), ("passkey:digits=0", "digits"),
                                           ("passkey:colour=2", "unknown key"), ("passkey:digits=x", "NAME=INTEGER")])
def test_bad_passkey_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        PasskeyTask.parse(spec)


def test_bad_documents_are_rejected():
    with pytest.raises(ValueError, match="depth"):
        passkey_document(1000, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match="length"):
        passkey_document(50, 0.5, np.random.default_rng(0))


def test_evaluate_passkey_reports_every_length_and_depth():
    model = tiny_model(num_tokens=256, xl_max_memories=4, max_knn_memories=256)
    result = evaluate_passkey(model, [300, 500], [0.2, 0.8], trials=3, memory_size=None, seq_len=16, batch_size=4,
                              progress=False)
    assert set(result["by_length"]) == {"300", "500"} and set(result["by_length"]["300"]) == {"0.2", "0.8"}
    assert all(0 <= v <= 1 for v in result["accuracy_by_length"].values())
    assert result["memory_size"] == 256 and result["context"] == 20
    with pytest.raises(ValueError, match="trials"):
        evaluate_passkey(model, [300], [0.5], trials=0, memory_size=0, seq_len=16)


def test_passkey_command_trains_and_compares_models(tmp_path, capsys):
    small = ["--seq-len", "16", "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16",
             "--xl-max-memories", "16", "--max-knn-memories", "1024", "--num-retrieved-memories", "4"]
    main(["train", "--data", "passkey:documents=8,min_length=300,max_length=400", "--run-dir", str(tmp_path / "mem"),
          "--steps", "2", "--memorizing-layers", "1", "--token-shift", "4", *small])
    main(["train", "--data", "passkey:documents=8,min_length=300,max_length=400", "--run-dir", str(tmp_path / "xl"),
          "--steps", "2", "--memorizing-layers", "", *small])
    main(["passkey", "--checkpoint", f"memory={tmp_path / 'mem'}", "--checkpoint", str(tmp_path / "xl"),
          "--lengths", "300,600", "--depths", "0.5", "--trials", "2", "--memory-sizes", "0,1024",
          "--output", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "| memory, memory off |" in out and "| memory, memory 1024 |" in out and "| xl |" in out
    saved = json.loads((tmp_path / "out" / "passkey.json").read_text())
    assert set(saved["curves"]) == {"memory, memory off", "memory, memory 1024", "xl"}
    assert saved["train_length"] == 400 and (tmp_path / "out" / "passkey.png").exists()
    for bad in (["--lengths", "100"], ["--depths", "2"]):
        with pytest.raises(SystemExit):
            main(["passkey", "--checkpoint", str(tmp_path / "xl"), *bad, "--output", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
