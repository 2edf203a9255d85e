"""The copy warm-up (memorizing_transformers_pytorch/copy_warmup.py): a data source of the normal training loop, continued by --init-from."""

import json

import numpy as np
import pytest
import torch

from experiments.recall.task import KEY_SYMBOLS, SYMBOLS
from memorizing_transformers_pytorch import MemorizingTransformerConfig
from memorizing_transformers_pytorch.checkpoint import latest_checkpoint
from memorizing_transformers_pytorch.copy_warmup import CopyStream, copy_batch, parse_copy_source
from memorizing_transformers_pytorch.data import IGNORE_INDEX, open_stream
from memorizing_transformers_pytorch.train import TrainConfig, train

MODEL = MemorizingTransformerConfig(
    num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,), max_knn_memories=64,
    num_retrieved_memories=4, xl_max_memories=16, pad_id=0, clear_memories_on_sos_token_id=2,
)


def copy_config(run_dir, **overrides) -> TrainConfig:
    values = dict(data="copy:span=8", run_dir=str(run_dir), seq_len=32, batch_size=2, steps=4, warmup_steps=1,
                  checkpoint_every=2, log_every=1, lr=2e-3, min_lr_ratio=1.0, weight_decay=0.01)
    return TrainConfig(**{**values, **overrides})


def test_copy_batches_hold_a_string_and_its_copy_and_mask_the_copied_bytes():
    tokens, mask = copy_batch(16, 64, 12, np.random.default_rng(0))
    assert tokens.shape == mask.shape == (16, 64)
    for row in range(16):
        copied = mask[row].nonzero().flatten().tolist()
        assert len(copied) == 11 and copied == list(range(copied[0], copied[0] + 11))
        first = copied[0] - 1  # the copy's first byte is not predictable, so it is not masked
        offsets = [o for o in range(12, 64 - 12 + 1) if first - o >= 0
                   and torch.equal(tokens[row, first - o : first - o + 12], tokens[row, first : first + 12])]
        assert offsets, row
    assert set(tokens.flatten().tolist()) <= set(SYMBOLS.tolist()) | set(KEY_SYMBOLS.tolist())
    with pytest.raises(ValueError, match="span"):
        copy_batch(2, 64, 40, np.random.default_rng(0))


def test_the_copy_source_scores_only_copied_bytes_in_independent_segments():
    stream = open_stream("copy:span=8", "train", batch_size=3, seq_len=32, seed=5)
    assert isinstance(stream, CopyStream)
    batch = stream.next_batch()
    assert batch.new_streams and batch.tokens.shape == batch.labels.shape == (3, 32)
    tokens, mask = copy_batch(3, 33, 8, np.random.default_rng([5, 11]))  # the same draw, by hand
    assert torch.equal(batch.tokens, tokens[:, :-1])
    scored = batch.labels != IGNORE_INDEX
    assert torch.equal(scored, mask[:, 1:]) and (scored.sum(1) == 7).all()
    assert torch.equal(batch.labels[scored], tokens[:, 1:][scored])
    state = stream.state_dict()
    json.dumps(state)  # checkpoints store it as JSON
    following = stream.next_batch()
    stream.load_state_dict(state)
    assert torch.equal(stream.next_batch().tokens, following.tokens)
    for bad in ("span=0", "spam=3", "span=x", "vocab=2", "span=8,vocab=", "vocab=-5"):
        with pytest.raises(ValueError, match="copy"):
            parse_copy_source(bad)
    assert parse_copy_source("") == (48, None) and parse_copy_source("vocab=4096, span=8") == (8, 4096)
    with pytest.raises(ValueError, match="span"):
        open_stream("copy:span=20", "train", batch_size=1, seq_len=32)


def test_a_token_level_copy_draws_from_the_whole_vocabulary_past_the_special_ids():
    stream = open_stream("copy:span=8,vocab=40", "train", batch_size=64, seq_len=32, seed=1)
    tokens = stream.next_batch().tokens
    assert tokens.min() >= 2 and tokens.max() <= 39 and len(tokens.unique()) == 38  # every id 2..39 drawn
    labels = stream.next_batch().labels
    assert ((labels == IGNORE_INDEX) | ((labels >= 2) & (labels < 40))).all()
    byte_level = open_stream("copy:span=8", "train", batch_size=64, seq_len=32, seed=1).next_batch().tokens
    assert byte_level.min() >= 0x21 and byte_level.max() <= 0xFF


def test_a_warmup_run_resumes_exactly_and_starts_no_memory_across_segments(tmp_path):
    full = train(MODEL, copy_config(tmp_path / "a"), progress=False)
    assert len(full["losses"]) == 4 and all(np.isfinite(full["losses"]))
    # every batch starts new streams: the memory holds only what the last segment wrote (32 - 16 XL pairs)
    assert full["knn_memories"][0].count.tolist() == [16, 16]
    train(MODEL, copy_config(tmp_path / "b"), progress=False)
    (tmp_path / "b" / "checkpoints" / "latest").write_text("step-0000002\n")
    resumed = train(MODEL, copy_config(tmp_path / "b"), resume=True, progress=False)["losses"]
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(full["losses"][2:]), rtol=1e-5, atol=1e-6)


def test_init_from_continues_a_warmup_run_on_other_data(tmp_path):
    warm = train(MODEL, copy_config(tmp_path / "warm", steps=2), progress=False)
    warmed = {k: v.clone() for k, v in warm["model"].state_dict().items()}
    recall = TrainConfig(data="recall:documents=8,length=120", run_dir=str(tmp_path / "recall"), seq_len=16,
                         batch_size=2, steps=1, lr=1e-12, warmup_steps=0, init_from=str(latest_checkpoint(tmp_path / "warm")))
    continued = train(MODEL, recall, progress=False)
    for name, value in continued["model"].state_dict().items():  # one step at lr ~0 moves nothing measurable
        torch.testing.assert_close(value, warmed[name], atol=1e-6, rtol=0)
