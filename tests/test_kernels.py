"""Kernels against their references: flex attention against the dense mask, compiled layers against eager ones,
and attention that stays in bfloat16 under autocast (issue 32). Flex attention and torch.compile on CPU compile
C++ kernels (gcc), so the first call of each test takes seconds."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_model
from torch.nn.attention.flex_attention import flex_attention as eager_flex

from memorizing_transformers_pytorch import MemorizingTransformerConfig, attention, masks
from memorizing_transformers_pytorch.knn_attention import l2_normalize
from memorizing_transformers_pytorch.masks import dense_mask, flex_mask
from memorizing_transformers_pytorch.train import TrainConfig, train

SOS = 1


def layout(B, n, *, boundary, padding):
    """Document numbers and key_ok of a segment: row 1 starts a new document at ``boundary``; row 0 ends with
    ``padding`` padding tokens."""
    doc = torch.zeros(B, n, dtype=torch.long)
    if boundary is not None:
        doc[1, boundary:] = 1
    key_ok = torch.ones(B, n, dtype=torch.bool)
    if padding:
        key_ok[0, n - padding:] = False
    return doc, key_ok


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")  # eager on purpose: the reference
@pytest.mark.parametrize("P,start,boundary,padding", [(0, 0, None, 0), (8, 0, 5, 3), (8, 7, 3, 0), (16, 19, 9, 2),
                                                      (8, 0, 0, 0)])
def test_the_flex_mask_is_the_dense_mask(P, start, boundary, padding):
    """flex attention (eager, torch's reference) under our score_mod and block mask gives SDPA's output under
    the dense mask, for XL caches with invalid slots, document boundaries, padding and later chunks."""
    torch.manual_seed(0)
    B, H, n, D = 2, 4, 20, 8
    doc, key_ok = layout(B, n, boundary=boundary, padding=padding)
    past_valid = (torch.rand(B, P) > 0.3) if P else None
    per_distance = torch.randn(H, P + n)
    queries = torch.arange(start + P, n + P)[:, None]
    bias = per_distance[:, (queries - torch.arange(P + n)).clamp(min=0)]
    dense = dense_mask(bias, doc, key_ok, past_valid, start, torch.float32)
    flex = flex_mask(per_distance, doc, key_ok, past_valid, start, torch.float32)
    torch.testing.assert_close(flex.dense(), dense)
    q, k, v = torch.randn(B, H, n - start, D), torch.randn(B, H, P + n, D), torch.randn(B, H, P + n, D)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=1.0)
    out = eager_flex(q, k, v, score_mod=flex.score_mod, block_mask=flex.block_mask, scale=1.0)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def read_stream(model, segments, chunks=None):
    """Logits of each segment read with the memories carried over; ``chunks``: read each segment in pieces of
    these sizes through ``step``."""
    state = model.new_state(batch_size=segments[0].shape[0], seq_len=segments[0].shape[1])
    out = []
    for x in segments:
        if chunks is None:
            logits, state = model.step(x, state)
        else:
            pieces, at = [], 0
            for size in chunks:
                logits, state = model.step(x[:, at:at + size], state)
                pieces.append(logits)
                at += size
            logits = torch.cat(pieces, dim=1)
        out.append(logits)
    return torch.cat(out, dim=1)


def stream_tokens(B=2, n=16, segments=3, num_tokens=32):
    torch.manual_seed(1)
    x = torch.randint(3, num_tokens, (B, n * segments))
    x[1, 21] = SOS  # a document starts inside the second segment of row 1
    return list(x.split(n, dim=1))


@pytest.mark.parametrize("gate", ["sigmoid", "joint", "mlp"])
def test_a_flex_model_reads_streams_as_the_sdpa_model(gate, monkeypatch):
    """Same weights, attention_kernel 'flex' vs 'sdpa': the same logits over three segments with XL caches, a
    kNN memory, a document boundary and grouped heads; and read a few tokens at a time through ``step``."""
    monkeypatch.setattr(masks, "FLEX_MIN_QUERIES", 4)  # flex for pieces of 4+ queries (not only 128+)
    overrides = dict(knn_gate=gate, xl_max_memories=8, heads=4, kv_heads=2, clear_memories_on_sos_token_id=SOS,
                     token_shift=2)
    sdpa = tiny_model(**overrides)
    flex = tiny_model(**overrides, attention_kernel="flex")
    flex.load_state_dict(sdpa.state_dict())
    segments = stream_tokens()
    with torch.no_grad():
        expected = read_stream(sdpa, segments)
        torch.testing.assert_close(read_stream(flex, segments), expected, rtol=1e-4, atol=1e-4)
        if gate == "sigmoid":  # the path that runs flex attention itself on CPU
            torch.testing.assert_close(read_stream(flex, segments, chunks=(1, 15)), expected, rtol=1e-4, atol=1e-4)


def test_flex_refuses_attention_dropout_and_unknown_kernels():
    with pytest.raises(ValueError, match="no attention dropout"):
        MemorizingTransformerConfig(num_tokens=8, attention_kernel="flex", attn_dropout=0.1)
    with pytest.raises(ValueError, match="attention_kernel must be one of"):
        MemorizingTransformerConfig(num_tokens=8, attention_kernel="flash")


def test_compiling_flex_layers_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="attention_kernel='flex'"):
        tiny_model(attention_kernel="flex").compile_layers()


def test_l2_normalize_is_f_normalize_and_keeps_bfloat16():
    x = torch.randn(3, 5, 16)
    x[0, 0] = 0.0
    torch.testing.assert_close(l2_normalize(x), F.normalize(x, dim=-1))
    half = x.bfloat16()
    assert l2_normalize(half).dtype == torch.bfloat16
    torch.testing.assert_close(l2_normalize(half).float(), F.normalize(x, dim=-1), rtol=1e-2, atol=1e-2)


def test_attention_stays_in_bfloat16_under_autocast(monkeypatch):
    """Under bf16 autocast the local attention gets bf16 queries and a bf16 mask built once per segment (no
    float32 round trip, no per-layer cast)."""
    seen = []
    original = attention.local_attention

    def recording(q, keys, values, attn_mask, dropout_p):
        seen.append((q.dtype, keys.dtype, attn_mask.dtype, attn_mask.data_ptr()))
        return original(q, keys, values, attn_mask, dropout_p)

    monkeypatch.setattr(attention, "local_attention", recording)
    model = tiny_model(memorizing_layers=(), xl_max_memories=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(2, 32, (2, 8)))
    assert [s[:3] for s in seen] == [(torch.bfloat16,) * 3] * 3
    assert len({s[3] for s in seen}) == 1  # one mask for the three layers


def test_memorizing_layers_stay_in_bfloat16_under_autocast(monkeypatch):
    seen = []
    original = attention.memory_attention

    def recording(q, keys, values, attn_mask, *args, **kwargs):
        seen.append((q.dtype, keys.dtype, attn_mask.dtype))
        return original(q, keys, values, attn_mask, *args, **kwargs)

    monkeypatch.setattr(attention, "memory_attention", recording)
    model = tiny_model(xl_max_memories=8)
    knn = model.create_knn_memories(batch_size=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, xl = model(torch.randint(2, 32, (2, 8)), knn_memories=knn)
        model(torch.randint(2, 32, (2, 8)), knn_memories=knn, xl_memories=xl)
    assert seen == [(torch.bfloat16,) * 3] * 2


@pytest.mark.parametrize("gate", ["sigmoid", "joint", "mlp"])
def test_memory_attention_returns_bfloat16_under_autocast(gate):
    """No float32 round trip out of the gates: their output stays in the compute dtype (a float32 parameter
    mixed in elementwise would promote the whole (B, H, n, Dh) output)."""
    from memorizing_transformers_pytorch import KNNMemory, memory_attention
    from memorizing_transformers_pytorch.knn_attention import make_gate

    memory = KNNMemory(dim=8, max_memories=16, num_indices=2, heads=2)
    memory.add(torch.randn(2, 2, 16, 2, 8))
    q, keys, values = (F.normalize(torch.randn(2, 2, 4, 8), dim=-1) for _ in range(3))
    mask = torch.zeros(1, 1, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = memory_attention(q.bfloat16(), keys.bfloat16(), values.bfloat16(), mask.bfloat16(), memory,
                               make_gate(gate, 2), scale=torch.ones(2, 1, 1), num_retrieved=4)
    assert out.dtype == torch.bfloat16


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line]


RECOMPILES = """
import torch
from memorizing_transformers_pytorch import MemorizingTransformer

torch._dynamo.config.fail_on_recompile_limit_hit = True  # running a block eagerly past the limit is an error
model = MemorizingTransformer(num_tokens=64, dim=32, depth=4, heads=2, dim_head=16, memorizing_layers=(3,),
                              max_knn_memories=64, xl_max_memories=16, xl_memory_layers=(3, 4)).compile_layers()
knn, xl = model.create_knn_memories(batch_size=2), None
for train in (True, True, True, False, False):
    model.train(train)
    with torch.set_grad_enabled(train), torch.autocast("cpu", dtype=torch.bfloat16):
        x = torch.randint(2, 64, (2, 16))
        loss, xl = model(x, knn_memories=knn, xl_memories=xl, labels=x)
    if train:
        loss.backward()
print("no block ran eagerly")
"""


def test_compiled_blocks_stay_compiled_through_every_variant():
    """Four blocks of three kinds (plain, XL, memorizing), a first segment and later ones, training and eval, under
    bf16 autocast: more compiled variants of Block.forward than torch's default recompile limit (8), past which
    it would run the rest eagerly; compile_layers makes room. In a fresh process: the limit counts per process."""
    import os
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", RECOMPILES], capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, PYTHONPATH=str(Path(__file__).parent.parent)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no block ran eagerly" in result.stdout


def test_compiled_training_matches_eager(tmp_path, corpus):
    """``train --compile`` (each layer compiled, the memory search eager): the losses of eager training, with a
    kNN memory, XL caches, token shift and document boundaries over 5 steps."""
    model = MemorizingTransformerConfig(
        num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(1,), max_knn_memories=64,
        num_retrieved_memories=4, xl_max_memories=16, token_shift=2, pad_id=0, clear_memories_on_sos_token_id=2)
    config = TrainConfig(data=corpus, seq_len=16, batch_size=2, steps=5, warmup_steps=1, checkpoint_every=0,
                         log_every=1, lr=3e-3, run_dir=str(tmp_path / "eager"))
    train(model, config)
    train(model, dataclasses.replace(config, compile=True, run_dir=str(tmp_path / "compiled")))
    eager, compiled = losses(tmp_path / "eager"), losses(tmp_path / "compiled")
    assert len(eager) == 5
    assert compiled == pytest.approx(eager, rel=1e-4, abs=1e-4)


def test_training_with_flex_on_cpu_is_a_clear_error(tmp_path, corpus):
    model = MemorizingTransformerConfig(num_tokens=256, dim=32, depth=1, heads=2, dim_head=16, memorizing_layers=(),
                                        attention_kernel="flex")
    with pytest.raises(ValueError, match="cannot train on CPU"):
        train(model, TrainConfig(data=corpus, seq_len=16, batch_size=2, steps=1, run_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_a_compiled_model_evaluates_as_the_eager_one():
    model = tiny_model(xl_max_memories=8, clear_memories_on_sos_token_id=SOS)
    compiled = tiny_model(xl_max_memories=8, clear_memories_on_sos_token_id=SOS)
    compiled.load_state_dict(model.state_dict())
    compiled.compile_layers()
    segments = stream_tokens()
    with torch.no_grad():
        torch.testing.assert_close(read_stream(compiled, segments), read_stream(model, segments), rtol=1e-4,
                                   atol=1e-4)
