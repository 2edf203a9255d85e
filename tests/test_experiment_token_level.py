"""The token-level summary (experiments/token_level): per kind and seed, bits per byte by memory size, the gains,
the paper's numbers beside them."""

import json

import pytest

from experiments.token_level import summarize


def write_eval(folder, by_size, baseline, trained=4096):
    folder.mkdir(parents=True)
    perplexity = {size: 2.0 ** (3 * bits) for size, bits in by_size.items()}  # as if 3 bytes per token
    (folder / "eval.json").write_text(json.dumps({
        "bits_per_byte": {"with_memory": by_size[str(trained)], "without_memory": by_size["0"], "baseline": baseline},
        "by_memory_size": by_size, "trained_memory_size": trained, "documents": 4,
        "perplexity": {"baseline": 2.0 ** (3 * baseline)}, "perplexity_by_memory_size": perplexity}))


def test_gains_by_kind_and_memory_size_with_the_papers_numbers(tmp_path, capsys):
    write_eval(tmp_path / "code_seed0", {"0": 2.0, "1024": 1.9, "4096": 1.8, "16384": 1.7}, 1.9)
    write_eval(tmp_path / "code_seed1", {"0": 2.0, "1024": 1.8, "4096": 1.6, "16384": 1.5}, 2.0)
    write_eval(tmp_path / "prose_seed0", {"0": 3.0, "1024": 3.0, "4096": 3.03, "16384": 3.0}, 3.0)
    write_eval(tmp_path / "code_seed0_64k", {"0": 9.0, "4096": 9.0}, 9.0)  # another evaluation: not a seed
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
    assert "| prose | 0 | 3.000 | 3.000 | 3.000 | 3.030 | 3.000 | -1.0% | -1.0% | 512.0 -> 545.0 -> 512.0 (-6%, 0%) |" in out
    assert "GitHub: 2.26 -> 2.03 -> 1.87 (10%, 17%)" in out and "| prose | 0 |" in out
    assert (tmp_path / "out" / "token_level_documents.png").stat().st_size > 0


def test_a_folder_without_finished_runs_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no finished runs"):
        summarize.main([str(tmp_path)])


def test_the_curve_evaluates_each_shared_checkpoint_once(tmp_path, capsys):
    from experiments.token_level import curve
    from memorizing_transformers_pytorch.cli import main

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(40):
        (corpus / f"d{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 30)
    run = tmp_path / "run"
    main(["demo", "--data", str(corpus), "--run-dir", str(run), "--preset", "tiny", "--num-tokens", "256",
          "--memorizing-layers", "1", "--xl-max-memories", "16", "--seq-len", "16", "--steps", "4", "--warmup-steps",
          "1", "--copy-warmup-steps", "0", "--checkpoint-every", "2", "--keep-checkpoints", "5", "--max-docs", "1",
          "--max-doc-bytes", "64", "--memory-sizes", "0,32", "--split", "train"])
    assert curve.shared_steps(run) == [2, 4]
    curve.main([str(run), "--memory-sizes", "0,32", "--max-doc-bytes", "64", "--max-docs", "2", "--split", "train",
                "--threads", "1"])
    result = json.loads((run / "curve.json").read_text())
    assert [row["step"] for row in result["steps"]] == [2, 4] and (run / "curve.png").stat().st_size > 0
    last = json.loads((run / "curve" / "step-4" / "eval.json").read_text())
    assert result["steps"][1]["baseline"] == last["bits_per_byte"]["baseline"]
    assert result["steps"][1]["by_memory_size"] == last["by_memory_size"]
    assert "| 4 |" in capsys.readouterr().out
    stamp = (run / "curve" / "step-2" / "eval.json").stat().st_mtime_ns
    curve.main([str(run), "--memory-sizes", "0,32"])  # already evaluated: read, not repeated
    assert (run / "curve" / "step-2" / "eval.json").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match="no step"):
        curve.main([str(tmp_path / "corpus")])

    # where the gain comes from: near, far and other tokens partition every scored token's bits
    import math

    import numpy as np

    from experiments.token_level.copyable import attribute
    from memorizing_transformers_pytorch.checkpoint import load_model
    from memorizing_transformers_pytorch.evaluate import token_log_probs

    tokens = np.frombuffer(b"def f(x): return x\n" * 6, dtype=np.uint8).astype(np.int64)
    row = attribute(run, [tokens], np.ones(256, dtype=np.int64), context=3, window=16)
    memory = load_model(run / "memory")
    assert memory.config.clear_memories_on_sos_token_id is None  # the tiny preset: the first token is not scored
    off = -token_log_probs(memory, tokens, memory_size=0)[0].sum() / math.log(2) / (len(tokens) - 1)
    assert sum(row["bits_per_byte"]["off"].values()) == pytest.approx(off, rel=1e-5)
    assert sum(row["on_vs_off"].values()) == pytest.approx(off - sum(row["bits_per_byte"]["on"].values()), abs=1e-6)


def test_copyable_tokens_are_split_by_how_far_back_their_last_context_was():
    import numpy as np

    from experiments.token_level.copyable import classify, measure

    near_copy = [5, 6, 7, 8, 9, 5, 6, 7, 8]  # "5 6 7" seen 5 tokens back, followed by 8 there and here
    masks = classify(np.array(near_copy), context=3, window=10)
    assert masks["near"].tolist() == [False] * 8 + [True] and not masks["far"].any()
    far = [1, 2, 3, 4] + list(range(10, 30)) + [1, 2, 3, 4, 1, 2, 3, 9]
    masks = classify(np.array(far), context=3, window=10)
    assert np.flatnonzero(masks["far"]).tolist() == [27]  # "1 2 3" then 4, 24 tokens back
    assert not masks["near"][31]  # "1 2 3" last seen 4 tokens back, followed by 4, not 9
    row = measure([np.array(far)], np.full(40, 2), context=3, window=10)
    assert (row["far_tokens"], row["far_bytes"], row["bytes"]) == (1, 2, 64)
    assert row["far_tokens_percent"] == pytest.approx(100 / 32)
