"""The ablation's summary: per setting and seed, the gains; mean and range over seeds."""

import json

import pytest

from experiments.ablation import summarize


def write_eval(folder, on, off, baseline):
    folder.mkdir(parents=True)
    (folder / "eval.json").write_text(json.dumps(
        {"bits_per_byte": {"with_memory": on, "without_memory": off, "baseline": baseline}}))


def test_gains_and_their_spread_over_seeds(tmp_path, capsys):
    write_eval(tmp_path / "all_seed0", 1.8, 2.0, 1.9)
    write_eval(tmp_path / "all_seed1", 1.6, 2.0, 2.0)
    write_eval(tmp_path / "paper_seed0", 4.0, 3.96, 4.0)
    summarize.main([str(tmp_path), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "ablation.json").read_text())
    row = result["summary"]["all"]
    assert row["seeds"] == [0, 1] and row["copy_warmup_steps"] == 400
    assert row["gain_vs_off_percent"]["mean"] == pytest.approx(15.0)  # 10% and 20%
    assert (row["gain_vs_off_percent"]["min"], row["gain_vs_off_percent"]["max"]) == pytest.approx((10.0, 20.0))
    assert row["gain_vs_baseline_percent"]["mean"] == pytest.approx((100 * 0.1 / 1.9 + 20.0) / 2)
    assert result["runs"]["paper"]["0"]["gain_vs_off_percent"] == pytest.approx(-100 * 0.04 / 3.96)
    out = capsys.readouterr().out
    assert "| all | 1 of 2 | 3 | 400 | 0,1 | 1.700 | 2.000 | 1.950 | +15.0% (+10.0 to +20.0) |" in out
    assert (tmp_path / "out" / "ablation.png").stat().st_size > 0


def test_a_folder_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        summarize.main([str(tmp_path)])
