"""The names metric (experiments/names): which uses count, how each is scored, and its command."""

import json
import math

import numpy as np
import pytest

from experiments.__main__ import add_commands
from experiments.names import metric
from experiments.names.metric import find_long_range_names
from memorizing_transformers_pytorch.cli import main as core_main


def main(argv):
    core_main(argv, extend=add_commands)


def test_long_range_name_cases_are_beyond_the_window():
    text = b"def compute_total(x):\n    pass\n" + b"# filler\n" * 500 + b"y = compute_total(3)\n" + b"z = compute_total(4)\n"
    cases = find_long_range_names(text, min_distance=4000)
    assert cases == [("compute_total", text.index(b"y = compute_total") + 4)]  # the second use is too close
    nearby_attribute = text.replace(b"# filler\n" * 250, b"# filler\n" * 249 + b"o.compute_total\n", 1)
    assert find_long_range_names(nearby_attribute, min_distance=4000) == []  # an attribute access is a mention


def test_cli_names_reports_memory_on_and_off(tmp_path, corpus, capsys):
    run = str(tmp_path / "names")
    main(["train", "--data", corpus, "--run-dir", run, "--steps", "1", "--seq-len", "16", "--dim", "32", "--depth", "2",
          "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2", "--max-knn-memories", "64",
          "--num-retrieved-memories", "4", "--xl-max-memories", "16"])
    (tmp_path / "names_data").mkdir()
    body = b"def helper_function():\n    pass\n" + b"x = 1\n" * 100 + b"helper_function()\n"
    for i in range(30):
        (tmp_path / "names_data" / f"m{i}.py").write_bytes(body)
    main(["names", "--checkpoint", run, "--eval-data", str(tmp_path / "names_data"), "--split", "train",
          "--min-distance", "300", "--memory-sizes", "0,64", "--max-docs", "2", "--output", str(tmp_path / "names.json")])
    result = json.loads((tmp_path / "names.json").read_text())
    assert result["cases"] > 0 and set(result["by_memory_size"]) == {"0", "64"}
    assert 0 <= result["by_memory_size"]["64"]["fraction_better_than_off"] <= 1
    out = capsys.readouterr().out
    assert "| name | memory 64 | memory off |" in out and "| `helper_function` | `he" in out


def test_name_recall_scores_the_rest_of_each_name(monkeypatch):
    """Log-probability and the greedy flag cover exactly the name's bytes after the prefix, per memory size."""
    text = b"def helper_function():\n    pass\n" + b"# filler\n" * 20 + b"helper_function()\n"
    offset = text.rindex(b"helper_function")
    rest = range(offset + 2, offset + len("helper_function"))  # document byte i is predicted by logp[i]

    def fake_log_probs(model, stream, *, memory_size, **kwargs):
        logp = np.full(len(stream) - 1, -5.0)
        logp[list(rest)] = -0.01 if memory_size else -1.0
        argmax = stream[1:].copy()  # right everywhere...
        if not memory_size:
            argmax[rest[-1]] = ord("X")  # ...but memory off misses the name's last byte
        return logp, argmax

    monkeypatch.setattr(metric, "token_log_probs", fake_log_probs)
    document = np.frombuffer(text, dtype=np.uint8)
    result = metric.name_recall(None, [document], memory_sizes=[0, 64], min_distance=100, progress=False)
    assert result["cases"] == 1 and result["cases_detail"][0]["offset"] == offset
    on, off = result["by_memory_size"]["64"], result["by_memory_size"]["0"]
    assert on["greedy_writes_name"] == 1.0 and off["greedy_writes_name"] == 0.0
    assert result["cases_detail"][0]["predicted"] == {"64": "lper_function", "0": "lper_functioX"}
    assert math.isclose(on["mean_log2_prob"], -0.01 * len(rest) / math.log(2))
    assert math.isclose(off["bits_per_byte"], 1.0 / math.log(2))
    assert on["fraction_better_than_off"] == 1.0
    reordered = metric.name_recall(None, [document], memory_sizes=[64, 0], min_distance=100, progress=False)
    assert reordered["by_memory_size"]["64"]["fraction_better_than_off"] == 1.0  # memory off listed last
    with pytest.raises(ValueError, match="prefix"):
        metric.name_recall(None, [document], memory_sizes=[0], min_distance=100, prefix=6, progress=False)
