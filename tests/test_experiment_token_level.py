"""The token-level summary (experiments/token_level): per kind and seed, bits per byte by memory size, the gains,
the paper's numbers beside them."""

import json

import pytest

from experiments.token_level import summarize


def write_eval(folder, by_size, baseline, trained=4096):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps({
        "bits_per_byte": {"with_memory": by_size[str(trained)], "without_memory": by_size["0"], "baseline": baseline},
        "by_memory_size": by_size, "trained_memory_size": trained, "perplexity": {}, "documents": 4}))


def test_gains_by_kind_and_memory_size_with_the_papers_numbers(tmp_path, capsys):
    write_eval(tmp_path / "code_seed0", {"0": 2.0, "1024": 1.9, "4096": 1.8, "16384": 1.7}, 1.9)
    write_eval(tmp_path / "code_seed1", {"0": 2.0, "1024": 1.8, "4096": 1.6, "16384": 1.5}, 2.0)
    write_eval(tmp_path / "prose_seed0", {"0": 3.0, "1024": 3.0, "4096": 3.03, "16384": 3.0}, 3.0)
    summarize.main([str(tmp_path), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "token_level_documents.json").read_text())
    code = result["summary"]["code"]
    assert code["seeds"] == [0, 1] and code["gain_vs_off_percent"]["mean"] == pytest.approx(15.0)  # 10%, 20%
    assert code["gain_vs_baseline_percent"]["mean"] == pytest.approx((100 * 0.1 / 1.9 + 20.0) / 2)
    assert code["by_memory_size"]["16384"] == pytest.approx(1.6)
    assert code["best_gain_vs_baseline_percent"]["max"] == pytest.approx(25.0)  # seed 1 at 16K: 1.5 against 2.0
    assert result["runs"]["prose"]["0"]["gain_vs_off_percent"] == pytest.approx(-1.0)
    out = capsys.readouterr().out
    assert "| code | 0,1 | 1.950 | 2.000 | 1.850 | 1.700 | 1.600 | +15.0% (+10.0 to +20.0) |" in out
    assert "GitHub: 2.26 -> 2.03 -> 1.87 (10%, 17%)" in out and "| prose | 0 |" in out
    assert (tmp_path / "out" / "token_level_documents.png").stat().st_size > 0


def test_a_folder_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        summarize.main([str(tmp_path)])
