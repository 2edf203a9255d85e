"""The recall task: documents whose answers are known, and the evaluation that scores them."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_model

from experiments.__main__ import add_commands
from experiments.recall import RecallTask, evaluate_recall, recall_document, training_document, wired_lookup_model
from experiments.recall.task import KEY_SYMBOLS, SYMBOLS
from memorizing_transformers_pytorch.cli import main as core_main
from memorizing_transformers_pytorch.data import load_documents


def main(argv):
    core_main(argv, extend=add_commands)


def statements(tokens, task):
    text = tokens.tobytes()
    return [text[i : i + task.width] for i in range(0, len(text), task.width)]


@pytest.mark.parametrize("distance", [56, 200, 1000])
def test_evaluation_document_queries_every_binding_once_at_the_asked_distance(distance):
    task = RecallTask()
    doc = recall_document(task, distance, np.random.default_rng(0))
    parts = statements(doc.tokens, task)
    assert all(p.endswith(b";") and len(p) == task.width for p in parts)
    bound, queried = parts[: task.bindings], parts[-task.bindings :]
    assert sorted(bound) == sorted(queried)
    keys = [p[: task.key_len] for p in parts[: -task.bindings]]
    assert len(set(keys)) == len(keys)  # filler keys are distractors, never repeats
    assert set(doc.tokens[: task.key_len]) <= set(KEY_SYMBOLS.tolist())
    expected = max(task.bindings, distance // task.width) * task.width
    slot_distance = [d for d, q in zip(doc.distances, queried) if q == bound[0]]
    assert doc.distances.max() - doc.distances.min() < 2 * task.bindings * task.width
    assert expected - task.bindings * task.width < slot_distance[0] < expected + task.bindings * task.width
    for start, d in zip(doc.value_starts, doc.distances):
        value = doc.tokens[start : start + task.value_len]
        assert np.array_equal(doc.tokens[start - d : start - d + task.value_len], value)
        assert set(value.tolist()) <= set(SYMBOLS.tolist())


def test_training_documents_repeat_bindings_faithfully():
    task = RecallTask(length=600)
    doc = training_document(task, np.random.default_rng(1))
    assert len(doc.tokens) == 600 // task.width * task.width
    assert len(doc.value_starts) > 10
    for start, d in zip(doc.value_starts, doc.distances):
        assert d > 0
        assert np.array_equal(doc.tokens[start - d - task.key_len : start - d + task.value_len],
                              doc.tokens[start - task.key_len : start + task.value_len])


@pytest.mark.parametrize("min_distance", [0, 300])
def test_training_queries_respect_min_distance_and_stay_faithful(min_distance):
    task = RecallTask(length=2048, value_len=4, query_rate=0.5, min_distance=min_distance)
    rng = np.random.default_rng(2)
    docs = [training_document(task, rng) for _ in range(5)]
    distances = np.concatenate([d.distances for d in docs])
    assert len(distances) > 100
    assert distances.min() >= min_distance and (min_distance == 0 or distances.min() < min_distance + task.width)
    for doc in docs:
        for start, d in zip(doc.value_starts, doc.distances):
            assert np.array_equal(doc.tokens[start - d - task.key_len : start - d + task.value_len],
                                  doc.tokens[start - task.key_len : start + task.value_len])


def test_recall_source_splits_are_deterministic_and_different():
    train = load_documents("recall:documents=5,length=300", "train")
    assert len(train) == 5 and all(len(d) == 300 // RecallTask().width * RecallTask().width for d in train)
    again = load_documents("recall:documents=5,length=300", "train")
    assert all(np.array_equal(a, b) for a, b in zip(train, again))
    assert not np.array_equal(train[0], load_documents("recall:documents=5,length=300", "test")[0])


@pytest.mark.parametrize("spec, message", [
    ("recall:colour=3", "unknown key"),
    ("recall:length=abc", "NAME=NUMBER"),
    ("recall:length=5", "two statements"),
    ("recall:query_rate=1.5", "query_rate"),
    ("recall:length=600,min_distance=400", "min_distance"),
])
def test_bad_recall_specs_are_rejected(spec, message):
    with pytest.raises(ValueError, match=message):
        RecallTask.parse(spec)


def test_evaluate_recall_reports_every_distance():
    model = tiny_model(num_tokens=256, xl_max_memories=4, max_knn_memories=256)
    result = evaluate_recall(model, RecallTask(), [56, 120], documents=3, memory_size=None, seq_len=16, batch_size=2,
                             progress=False)
    for distance in ("56", "120"):
        row = result["by_distance"][distance]
        assert row["queries"] == 3 * 8 and 0 <= row["accuracy"] <= 1 and row["bits_per_value_byte"] > 0
        assert len(row["byte_accuracy"]) == 8 and min(row["byte_accuracy"]) >= row["accuracy"]  # all bytes right
    assert result["memory_size"] == 256 and result["chance_accuracy"] == 93.0**-8


def test_recall_command_trains_and_evaluates(tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--data", "recall:documents=8,length=120", "--run-dir", str(run), "--steps", "2", "--seq-len", "16",
          "--dim", "32", "--depth", "2", "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2",
          "--xl-max-memories", "16", "--max-knn-memories", "128", "--num-retrieved-memories", "4", "--knn-gate", "mlp"])
    main(["recall", "--checkpoint", str(run), "--distances", "88,200", "--memory-sizes", "0,128", "--documents", "2"])
    out = capsys.readouterr().out
    assert "| memory off |" in out and "| memory 128 |" in out
    saved = json.loads((run / "checkpoints" / "step-0000002" / "recall.json").read_text())
    assert set(saved) == {"memory off", "memory 128"} and (run / "checkpoints" / "step-0000002" / "recall.png").exists()
    with pytest.raises(SystemExit):
        main(["recall", "--checkpoint", str(run), "--distances", "10"])
    # other numbers of neighbours, on other documents: the same weights, one curve per (size, k)
    main(["recall", "--checkpoint", str(run), "--distances", "88", "--memory-sizes", "0,128", "--k", "1,4",
          "--documents", "2", "--seed", "7", "--output", str(tmp_path / "k")])
    saved = json.loads((tmp_path / "k" / "recall.json").read_text())
    assert set(saved) == {"memory off", "memory 128, k = 1", "memory 128, k = 4"}
    with pytest.raises(SystemExit):
        main(["recall", "--checkpoint", str(run), "--distances", "88", "--memory-sizes", "128", "--k", "0"])
    with pytest.raises(SystemExit):
        main(["recall", "--checkpoint", str(run), "--distances", "88", "--memory-sizes", "128", "--k", ","])
    with pytest.raises(SystemExit):  # a k above a memory size
        main(["recall", "--checkpoint", str(run), "--distances", "88", "--memory-sizes", "0,8", "--k", "4,16"])


def test_load_model_takes_other_search_settings_only(tmp_path):
    from memorizing_transformers_pytorch.checkpoint import load_model, save_checkpoint

    model = tiny_model(num_tokens=256)
    save_checkpoint(tmp_path, 1, model, state={})
    other = load_model(tmp_path, num_retrieved_memories=2, max_knn_memories=32)
    assert other.config.num_retrieved_memories == 2 and other.config.max_knn_memories == 32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    with pytest.raises(ValueError, match="not search settings"):
        load_model(tmp_path, dim=64)


def test_a_wired_lookup_recalls_from_memory_far_beyond_the_context():
    """Memory on: recall at 10x the local + XL context; memory off (same weights): near chance."""
    model = wired_lookup_model(xl=32)
    task = RecallTask(value_len=1)
    far = 640  # segments of 32 + XL 32 = 64 bytes of context
    with_memory = evaluate_recall(model, task, [far], documents=8, memory_size=4096, seq_len=32, progress=False)
    without = evaluate_recall(model, task, [far], documents=8, memory_size=0, seq_len=32, progress=False)
    near = evaluate_recall(model, task, [task.bindings * task.width], documents=8, memory_size=0, seq_len=64,
                           progress=False)
    assert near["by_distance"]["32"]["accuracy"] >= 0.9  # the circuit works inside the context
    assert with_memory["by_distance"][str(far)]["accuracy"] >= 0.9
    assert with_memory["by_distance"][str(far)]["byte_accuracy"] == [with_memory["by_distance"][str(far)]["accuracy"]]
    assert without["by_distance"][str(far)]["accuracy"] <= 0.2


def test_seed_table_reads_each_seeds_last_phase_and_refuses_mixed_schedules(tmp_path, capsys):
    from experiments.recall import seed_table

    def curve(value):
        return {"by_distance": {"352": {"accuracy": value}, "2048": {"accuracy": value}}}

    def first_phase(folder, variants):
        folder.mkdir(parents=True)
        saved = {"variants": {n: {**curve(v), "memory_off": {"352": 0.0, "2048": 0.0}, "description": n,
                                  "documents_per_distance": 4, "train_seconds": 10.0, "warmup_seconds": 1.0}
                              for n, v in variants.items()},
                 "context": 256, "data": "recall", "warmup_steps": 4, "steps": 30}
        (folder / "recall.json").write_text(json.dumps(saved))

    def second_phase(folder, variant, curves, steps=30):
        (folder / "final" / variant).mkdir(parents=True)
        (folder / "final" / variant / "recall.json").write_text(json.dumps(curves))
        (folder / f"{variant}_more").mkdir()
        (folder / f"{variant}_more" / "metrics.jsonl").write_text(json.dumps({"step": steps, "elapsed_s": 5.0}))

    for seed, value in ((0, 0.5), (1, 0.25)):
        first_phase(tmp_path / f"seed{seed}", {"shift3": value})
    first_phase(tmp_path / "baselines", {"xl_only": 0.125, "plain": 0.0})
    seed_table.main(tmp_path)  # first phase only
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["steps"] == [30] and saved["by_seed"]["1"]["memory_16k"]["2048"] == 0.25
    assert saved["baselines"]["xl_only"]["352"] == 0.125

    second_phase(tmp_path / "seed0", "shift3", {"memory off": curve(0.0), "memory 16384": curve(1.0)})
    with pytest.raises(SystemExit, match="different steps"):  # seed 1 has no second phase yet
        seed_table.main(tmp_path)
    second_phase(tmp_path / "seed1", "shift3", {"memory off": curve(0.125), "memory 16384": curve(0.875)})
    for name in ("xl_only", "plain"):
        second_phase(tmp_path / "baselines", name, {"memory off": curve(0.0)})
    seed_table.main(tmp_path)
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["steps"] == [30, 30]
    assert saved["by_seed"]["0"]["memory_16k"] == {"352": 1.0, "2048": 1.0}
    assert saved["by_seed"]["1"]["memory_off"]["2048"] == 0.125 and saved["by_seed"]["1"]["train_seconds"] == 16.0
    assert saved["summary"]["2048"]["seeds_at_least_0.95"] == 1 and saved["summary"]["2048"]["mean"] == 0.9375
    assert saved["baselines"]["xl_only"]["352"] == 0.0
    assert "| seed 1, memory 16K | 0.875 | 0.875 |" in capsys.readouterr().out
