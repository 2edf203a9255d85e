"""Token-level models end to end: the tokenizer and prepare commands, training on shards or on text with a
tokenizer, evaluation (bits per byte against a per-token reference, perplexity) and generation without a
tokenizer flag, presets with a tokenizer's ids, and the errors for tokenizers that do not match."""

import json
import math

import numpy as np
import pytest
import torch

from memorizing_transformers_pytorch import MemorizingTransformer
from memorizing_transformers_pytorch.checkpoint import checkpoint_tokenizer, latest_checkpoint, load_checkpoint, load_model
from memorizing_transformers_pytorch.cli import _model_and_train_configs, build_parser, main
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import score, token_log_probs
from memorizing_transformers_pytorch.tokenizer import BYTES, load_tokenizer, train_tokenizer

TEXTS = [f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * (3 + i % 5) for i in range(80)]
SMALL = ["--preset", "tiny", "--seq-len", "16", "--steps", "2", "--warmup-steps", "1", "--checkpoint-every", "0",
         "--xl-max-memories", "16"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    for i, text in enumerate(TEXTS):
        (folder / f"d{i}.txt").write_text(text)  # these 80 names fall in every split
    return folder


@pytest.fixture(scope="module")
def tokenizer_file(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    main(["tokenizer", "--data", str(corpus), "--vocab-size", "300", "--out", str(path)])
    return path


def test_tokenizer_prepare_train_eval_generate_from_the_command_line(corpus, tokenizer_file, tmp_path, capsys):
    shards, run = tmp_path / "shards", tmp_path / "run"
    main(["prepare", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--out", str(shards)])
    assert "tokens/s" in capsys.readouterr().out
    main(["train", "--data", f"shards:{shards}", "--run-dir", str(run), *SMALL])
    checkpoint = latest_checkpoint(run)
    tokenizer = load_tokenizer(tokenizer_file)
    assert (checkpoint / "tokenizer.json").is_file() and checkpoint_tokenizer(run).same_vocabulary(tokenizer)
    config = load_model(run).config
    assert (config.num_tokens, config.pad_id, config.clear_memories_on_sos_token_id) == (300, 0, 1)

    main(["eval", "--checkpoint", str(run), "--memory-sizes", "0,64", "--max-docs", "3"])  # no --tokenizer
    assert "perplexity" in capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert set(result["perplexity"]) == {"with_memory", "without_memory"} and result["tokenizer"]["num_tokens"] == 300
    test_texts = sorted((bytes(d).decode() for d in load_documents(str(corpus), "test")), key=len, reverse=True)[:3]
    assert result["bytes"] == sum(len(t.encode()) for t in test_texts)

    main(["generate", "--checkpoint", str(run), "--prompt", "def f", "--max-new-tokens", "5", "--temperature", "0"])
    captured = capsys.readouterr()
    assert captured.out.startswith("def f") and "5 generated" in captured.err


def test_the_tokenizer_command_reports_its_throughput(corpus, tmp_path, capsys):
    main(["tokenizer", "--data", str(corpus), "--vocab-size", "280", "--out", str(tmp_path / "tok")])
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["num_tokens"] == 280 and stats["encoding"]["tokens_per_s"] > 0
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_training_on_text_with_a_tokenizer_and_tokenizers_that_do_not_match(corpus, tokenizer_file, tmp_path, capsys):
    run = tmp_path / "run"
    main(["train", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--run-dir", str(run), "--log-every", "1",
          *SMALL])
    line = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert math.isclose(line["bits_per_byte"], line["loss"] / math.log(2) / line["bytes_per_token"])
    main(["eval", "--checkpoint", str(run), "--tokenizer", str(tokenizer_file), "--memory-sizes", "0", "--max-docs", "1"])
    capsys.readouterr()

    other = train_tokenizer(TEXTS, vocab_size=290).save(tmp_path / "other.json")
    for command in (["eval", "--checkpoint", str(run), "--memory-sizes", "0"],
                    ["generate", "--checkpoint", str(run), "--prompt", "x", "--max-new-tokens", "1"]):
        with pytest.raises(SystemExit):
            main([*command, "--tokenizer", str(other)])
        assert "does not match" in capsys.readouterr().err
    byte_run = tmp_path / "bytes"
    main(["train", "--data", str(corpus), "--run-dir", str(byte_run), *SMALL, "--preset", "demo", "--dim", "32",
          "--depth", "2", "--heads", "2", "--dim-head", "16", "--memorizing-layers", "2", "--max-knn-memories", "64"])
    with pytest.raises(SystemExit):  # a byte-level checkpoint has no room for 300 tokens
        main(["eval", "--checkpoint", str(byte_run), "--tokenizer", str(tokenizer_file), "--memory-sizes", "0"])
    assert "num_tokens=256 (the tokenizer's: 300)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["eval", "--checkpoint", str(run), "--baseline-checkpoint", str(byte_run), "--memory-sizes", "0"])
    assert "--baseline-checkpoint" in capsys.readouterr().err


def test_flags_that_contradict_the_tokenizer_are_refused(corpus, tokenizer_file, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--run-dir", str(tmp_path / "r"),
              *SMALL, "--num-tokens", "500"])
    assert "num_tokens=500 (the tokenizer's: 300)" in capsys.readouterr().err


def test_presets_take_num_tokens_and_ids_from_the_tokenizer_and_flags_override_fields(tokenizer_file):
    args = build_parser().parse_args(["train", "--preset", "paper_base", "--tokenizer", str(tokenizer_file),
                                      "--max-knn-memories", "8192"])
    config, train_config = _model_and_train_configs(args)
    assert (config.num_tokens, config.pad_id, config.clear_memories_on_sos_token_id) == (300, 0, 1)
    assert config.max_knn_memories == 8192 and train_config.tokenizer == str(tokenizer_file)
    paper = _model_and_train_configs(build_parser().parse_args(["train", "--preset", "paper_base"]))[0]
    # Wu et al. 2022, section 4 / Table 4: 12 layers, width 1024, 8 heads of 128, FFN 4096, memory in layer 9,
    # k = 32, a 512-token XL cache, a 65K memory, a 32K vocabulary
    assert (paper.depth, paper.dim, paper.heads, paper.dim_head, paper.dim * paper.ff_mult) == (12, 1024, 8, 128, 4096)
    assert (paper.memorizing_layers, paper.num_retrieved_memories, paper.xl_max_memories, paper.max_knn_memories,
            paper.num_tokens) == ((9,), 32, 512, 65536, 32000)


def reference_bits_and_tokens(model, documents, sos_id, memory_size, seq_len):
    """Loss in bits and scored tokens of one stream holding the documents one after another (as one batch row
    reads them), from per-token log-probabilities; the document-start markers are not scored."""
    stream = np.concatenate([np.concatenate(([sos_id], d)) for d in documents])
    logp, _ = token_log_probs(model, stream, memory_size=memory_size, seq_len=seq_len)
    scored = stream[1:] != sos_id
    return -float(logp[scored].astype(np.float64).sum()) / math.log(2), int(scored.sum())


@pytest.mark.parametrize("memory_size", [0, None])
def test_token_level_bits_per_byte_are_bits_over_the_utf8_bytes_of_the_text(memory_size):
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    model = MemorizingTransformer(num_tokens=300, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,),
                                  max_knn_memories=64, num_retrieved_memories=4, xl_max_memories=16, pad_id=0,
                                  clear_memories_on_sos_token_id=1).eval()
    texts = [TEXTS[7] * 4, "é😀 " + TEXTS[3]]
    documents = [tokenizer.encode(t) for t in texts]
    got = score(model, documents, memory_size=memory_size, tokenizer=tokenizer, batch_size=1, seq_len=16)
    bits, tokens = reference_bits_and_tokens(model, documents, 1, memory_size, 16)
    utf8_bytes = sum(len(t.encode()) for t in texts)
    assert got.tokens == tokens == sum(map(len, documents)) and got.bytes == utf8_bytes
    assert got.bits_per_byte == pytest.approx(bits / utf8_bytes, rel=1e-5)
    assert got.perplexity == pytest.approx(math.exp(bits * math.log(2) / tokens), rel=1e-5)


def test_byte_level_bits_per_byte_count_one_byte_per_scored_token():
    torch.manual_seed(0)
    model = MemorizingTransformer(num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,),
                                  max_knn_memories=64, num_retrieved_memories=4, xl_max_memories=16, pad_id=0,
                                  clear_memories_on_sos_token_id=2).eval()
    documents = [BYTES.encode(TEXTS[5] * 3), BYTES.encode("héllo " * 9)]
    got = score(model, documents, memory_size=None, batch_size=1, seq_len=16)
    bits, tokens = reference_bits_and_tokens(model, documents, 2, None, 16)
    assert got.tokens == got.bytes == tokens == sum(map(len, documents))
    assert got.bits_per_byte == pytest.approx(bits / tokens, rel=1e-5)
    assert got.perplexity == pytest.approx(2 ** got.bits_per_byte, rel=1e-9)


def test_the_demo_at_token_level_warms_up_on_the_tokenizers_vocabulary(corpus, tokenizer_file, tmp_path):
    shards, run = tmp_path / "shards", tmp_path / "demo"
    main(["prepare", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--out", str(shards)])
    main(["demo", "--data", f"shards:{shards}", "--run-dir", str(run), "--preset", "tiny", "--memorizing-layers", "1",
          "--xl-max-memories", "16", "--seq-len", "16", "--steps", "2", "--warmup-steps", "1", "--copy-warmup-steps", "2",
          "--max-docs", "2", "--max-doc-bytes", "64", "--memory-sizes", "0,32"])
    assert load_checkpoint(run / "warmup")["train_config"]["data"] == "copy:vocab=300"  # ids 2..299, not bytes
    result = json.loads((run / "eval.json").read_text())
    assert set(result["bits_per_byte"]) == {"with_memory", "without_memory", "baseline"}
    assert result["tokenizer"]["num_tokens"] == 300
    # text with --tokenizer instead of shards: the warm-up takes no tokenizer, the runs after it do
    text_run = tmp_path / "text_demo"
    main(["demo", "--data", str(corpus), "--tokenizer", str(tokenizer_file), "--run-dir", str(text_run),
          "--preset", "tiny", "--memorizing-layers", "1", "--xl-max-memories", "16", "--seq-len", "16", "--steps", "2",
          "--warmup-steps", "1", "--copy-warmup-steps", "2", "--max-docs", "2", "--max-doc-bytes", "64",
          "--memory-sizes", "0,32"])
    assert load_checkpoint(text_run / "warmup")["train_config"]["tokenizer"] == ""
    assert checkpoint_tokenizer(text_run / "memory").same_vocabulary(load_tokenizer(tokenizer_file))


def test_prepare_writes_an_empty_valid_or_test_split_of_a_small_folder(tokenizer_file, tmp_path, capsys):
    folder = tmp_path / "small"
    folder.mkdir()
    for i in (1, 2, 3):  # these three names all fall in the train split
        (folder / f"f{i}.py").write_text(f"def f{i}(x):\n    return x\n" * 50)
    main(["prepare", "--data", str(folder), "--tokenizer", str(tokenizer_file), "--out", str(tmp_path / "shards")])
    captured = capsys.readouterr()
    assert "no document in its 'test' split" in captured.err and "test: 0 documents" in captured.out
    assert len(load_documents(f"shards:{tmp_path / 'shards'}", "train")) == 3
    with pytest.raises(ValueError, match="no non-empty documents in its 'test' split"):
        load_documents(f"shards:{tmp_path / 'shards'}", "test")
    (tmp_path / "valid_only").mkdir()
    (tmp_path / "valid_only" / "notes.txt").write_text("")  # no non-empty document at all
    with pytest.raises(SystemExit):  # an empty train split is still an error
        main(["prepare", "--data", str(tmp_path / "valid_only"), "--tokenizer", str(tokenizer_file), "--out",
              str(tmp_path / "none")])
    assert "no non-empty documents in its 'train' split" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
