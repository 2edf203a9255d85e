"""The memory-size figure: our evaluations beside the paper's trend."""

import json

import pytest

from experiments.memory_size import plot


def test_the_figure_and_table_show_each_size_relative_to_the_memory_off_value(tmp_path, capsys):
    saved = {"by_memory_size": {"0": 2.0, "1024": 1.5, "65536": 1.0}, "bits_per_byte": {"baseline": 1.8}}
    (tmp_path / "eval.json").write_text(json.dumps(saved))
    plot.main([f"ours={tmp_path / 'eval.json'}", "--output", str(tmp_path / "fig.png")])
    out = capsys.readouterr().out
    assert "| ours | 2.000 | 1.500 (-25.0%) |" in out and "1.000 (-50.0%)" in out
    assert "| paper, context 512" in out and (tmp_path / "fig.png").stat().st_size > 0


@pytest.mark.parametrize("spec", ["no-equals-sign", "=x.json", "name="])
def test_bad_specs_are_refused(spec):
    with pytest.raises(SystemExit):
        plot.main([spec, "--output", "x.png"])


def test_a_json_without_sizes_is_refused(tmp_path):
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(SystemExit, match="by_memory_size"):
        plot.main([f"x={tmp_path / 'other.json'}", "--output", str(tmp_path / "x.png")])
