"""The fine-tuning experiment (experiments/hf_finetune) end to end at a toy size."""

import json

import pytest

pytest.importorskip("transformers")


@pytest.mark.slow
def test_the_experiment_runs_every_phase_and_writes_its_table(tmp_path, capsys):
    from experiments.hf_finetune.run import ROWS, main

    main(["all", "--root", str(tmp_path), "--pretrain-steps", "4", "--extra-steps", "2", "--seq-len", "32",
          "--batch-size", "2", "--memory", "64", "--knn-index", "exact", "--eval-docs", "1", "--eval-doc-bytes", "512"])
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["bits_per_byte"]) == {run for run, _, _ in ROWS}
    assert set(result["bits_per_byte"]["finetune"]) == {"on", "off"}
    assert "| (a) continued without memory | 4 + 2 |" in capsys.readouterr().out
