"""The Hugging Face adapter (hf.py) on tiny random configs of each supported family, on CPU, without downloads:
every model is built from a config, saved with ``save_pretrained`` and loaded back from that folder."""

import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from conftest import hf_bpe_tokenizer  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
)

from memorizing_transformers_pytorch import StreamState, hf  # noqa: E402
from memorizing_transformers_pytorch.data import Batch  # noqa: E402
from memorizing_transformers_pytorch.evaluate import read_stream  # noqa: E402
from memorizing_transformers_pytorch.hf import HFMemoryConfig, MemorizingHFModel, check_tokenizer  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SOS, PAD = 2, 0
FAMILIES = ("llama", "mistral", "qwen2", "gpt2")


def hf_config(family: str, vocab: int = 64):
    """A tiny random config: 2 layers, 4 query heads of width 8; grouped-query (2 or 1 kv heads) for RoPE models."""
    llama_like = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=1, eos_token_id=3)
    return {
        "llama": lambda: LlamaConfig(**llama_like),
        "mistral": lambda: MistralConfig(**llama_like, sliding_window=64),
        "qwen2": lambda: Qwen2Config(**{**llama_like, "num_key_value_heads": 1}),
        "gpt2": lambda: GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1,
                                   eos_token_id=3),
    }[family]()


def saved_model(tmp_path, family: str, vocab: int = 64, **from_config) -> str:
    torch.manual_seed(0)
    folder = tmp_path / family
    AutoModelForCausalLM.from_config(hf_config(family, vocab), **from_config).save_pretrained(folder)
    return str(folder)


COMBINES = hf.COMBINES


def memory_model(folder: str, combine: str = "gate", **overrides) -> MemorizingHFModel:
    config = dict(memorizing_layers=(2,), max_knn_memories=16, num_retrieved_memories=4,
                  clear_memories_on_sos_token_id=SOS, pad_id=PAD, knn_combine=combine, knn_memory_distance=16,
                  knn_keep_first=0)
    config.update(overrides)
    return MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(**config)).eval()


def plain_model(folder: str, **kwargs):
    return AutoModelForCausalLM.from_pretrained(folder, **kwargs).eval()


def pre_rotation_pairs(plain, x: torch.Tensor, layer: int, normalise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``layer``'s (from 1) keys and values ``(B, Hkv, n, Dh)`` of segment ``x`` read alone, from its
    projections (before any rotation); keys L2-normalised unless ``normalise`` is False."""
    captured = {}
    if plain.config.model_type == "gpt2":
        attention = plain.transformer.h[layer - 1].attn
        handle = attention.c_attn.register_forward_hook(lambda m, i, out: captured.update(kv=out.split(32, dim=2)[1:]))
    else:
        attention = plain.model.layers[layer - 1].self_attn
        handles = [attention.k_proj.register_forward_hook(lambda m, i, out: captured.update(k=out)),
                   attention.v_proj.register_forward_hook(lambda m, i, out: captured.update(v=out))]
    with torch.no_grad():
        plain(x)
    if plain.config.model_type == "gpt2":
        handle.remove()
        keys, values = captured["kv"]
    else:
        for h in handles:
            h.remove()
        keys, values = captured["k"], captured["v"]
    B, n, _ = keys.shape
    keys, values = (t.view(B, n, -1, 8).transpose(1, 2) for t in (keys, values))
    return torch.nn.functional.normalize(keys, dim=-1) if normalise else keys, values


# ------------------------------------------------------------------------------------------ memory off is exact
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("combine", COMBINES)
def test_memory_off_or_empty_gives_the_unmodified_models_logits(tmp_path, family, combine):
    folder = saved_model(tmp_path, family)
    plain, model = plain_model(folder), memory_model(folder, combine)
    stream = torch.randint(4, 64, (2, 3, 8))
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        for segment in stream.unbind(1):
            reference = plain(segment).logits
            torch.testing.assert_close(model(segment)[0], reference, rtol=1e-6, atol=1e-6)  # memory off
        first = stream[:, 0]
        torch.testing.assert_close(model(first, knn_memories=knn)[0], plain(first).logits, rtol=1e-6, atol=1e-6)  # empty
        second = stream[:, 1]
        used = model(second, knn_memories=knn)[0]
    assert not torch.allclose(used, plain(second).logits)  # a filled memory is read


@pytest.mark.parametrize("family", ("llama", "gpt2"))
@pytest.mark.parametrize("combine", COMBINES)
def test_memory_off_is_exact_over_eager_attention_too(tmp_path, family, combine):
    folder = saved_model(tmp_path, family)
    plain = plain_model(folder, attn_implementation="eager")
    model = MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(memorizing_layers=(2,), knn_combine=combine),
                                              attn_implementation="eager")
    x = torch.randint(4, 64, (2, 9))
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        torch.testing.assert_close(model(x, knn_memories=knn)[0], plain(x).logits, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------ FIFO memory, positions, reads
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("combine", COMBINES)
def test_streaming_fills_each_memory_first_in_first_out_with_keys_before_rotation(tmp_path, family, combine):
    """Three segments of 8 into a memory of 16: the third overwrites the first. What is stored is the layer's
    own keys before RoPE (normalised for the "gate" combine) and its values, from each segment's forward pass."""
    folder = saved_model(tmp_path, family)
    plain, model = plain_model(folder), memory_model(folder, combine)
    stream = torch.randint(4, 64, (2, 3, 8))
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        for segment in stream.unbind(1):
            model(segment, knn_memories=knn)
    memory = knn[0]
    assert memory.heads == model.kv_heads == (1 if family == "qwen2" else 2 if family != "gpt2" else 4)
    assert memory.count.tolist() == [16, 16]
    normalise = combine == "gate"  # "joint" stores the keys as projected, "gate" L2-normalises them
    third_keys, third_values = pre_rotation_pairs(plain, stream[:, 2], layer=2, normalise=normalise)
    second_keys, _ = pre_rotation_pairs(plain, stream[:, 1], layer=2, normalise=normalise)
    torch.testing.assert_close(memory.keys[:, :, :8], third_keys, rtol=1e-5, atol=1e-5)  # slots 0-7: overwritten
    torch.testing.assert_close(memory.values[:, :, :8], third_values, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(memory.keys[:, :, 8:], second_keys, rtol=1e-5, atol=1e-5)
    # with the document's first 2 pairs kept, the ring turns over the other 14 slots
    model = memory_model(folder, combine, knn_keep_first=2)
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        for segment in stream.unbind(1):
            model(segment, knn_memories=knn)
    first_keys, _ = pre_rotation_pairs(plain, stream[:, 0], layer=2, normalise=normalise)
    keys = knn[0].keys
    torch.testing.assert_close(keys[:, :, :2], first_keys[:, :, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_queries_search_the_memory_before_rotation_too(tmp_path, family, monkeypatch):
    """Under RoPE, queries and stored keys are both unrotated: every memory scores as if at distance 0."""
    folder = saved_model(tmp_path, family)
    plain, model = plain_model(folder), memory_model(folder)
    seen = []
    real_retrieve = hf.retrieve
    monkeypatch.setattr(hf, "retrieve", lambda memory, q, k, **kw: seen.append(q) or real_retrieve(memory, q, k, **kw))
    captured = {}
    plain.model.layers[1].self_attn.q_proj.register_forward_hook(lambda m, i, out: captured.update(q=out))
    x = torch.randint(4, 64, (2, 8))
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        model(x, knn_memories=knn)
        plain(x)
    expected = torch.nn.functional.normalize(captured["q"].view(2, 8, 4, 8).transpose(1, 2), dim=-1)
    torch.testing.assert_close(seen[0], expected, rtol=1e-5, atol=1e-5)


def test_the_joint_read_is_one_softmax_over_local_keys_and_memories_placed_at_a_fixed_distance():
    """Against a naive reference: each query attends, in one softmax of the layer's own scaled logits, to its
    causal local keys and to every stored pair, rotated as if it stood ``knn_memory_distance`` tokens back."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from memorizing_transformers_pytorch.memory import KNNMemory

    torch.manual_seed(0)
    B, H, Hkv, m, Dh, stored, distance = 2, 4, 2, 5, 8, 6, 40
    rotary = LlamaRotaryEmbedding(hf_config("llama"))
    positions = torch.arange(m).expand(B, m)
    cos, sin = rotary(torch.empty(0), positions)
    q, k = apply_rotary_pos_emb(torch.randn(B, H, m, Dh), torch.randn(B, Hkv, m, Dh), cos, sin)
    v = torch.randn(B, Hkv, m, Dh)
    scaling = Dh**-0.5
    local = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=True)
    memory = KNNMemory(dim=Dh, max_memories=16, num_indices=B, heads=Hkv, index="exact")
    memory_keys, memory_values = torch.randn(B, Hkv, stored, Dh), torch.randn(B, Hkv, stored, Dh)
    memory.store(torch.stack((memory_keys, memory_values), dim=-2))
    layer = hf._LayerRead(hf.MemoryLayer(H, temperature_init=1.0, gate_bias_init=0.0), memory)
    at_distance = tuple(t.unsqueeze(1) for t in rotary(torch.empty(0), torch.full((1, 1), distance)))
    read = hf._SegmentRead({0: layer}, (cos, sin), at_distance, memory_ok=torch.ones(B, m, dtype=torch.bool),
                           num_retrieved=8, combine="joint")
    with torch.no_grad():
        out = read.read(layer, q, k, v, local.transpose(1, 2), 0.0, attention_mask=None, scaling=scaling)
    expected = torch.empty(B, m, H, Dh)
    group = H // Hkv
    for i in range(m):
        mcos, msin = rotary(torch.empty(0), torch.full((1, stored), i - distance))
        placed, _ = apply_rotary_pos_emb(memory_keys, memory_keys, mcos, msin)  # (B, Hkv, stored, Dh)
        keys = torch.cat((placed, k[:, :, : i + 1]), dim=2).repeat_interleave(group, dim=1)
        values = torch.cat((memory_values, v[:, :, : i + 1]), dim=2).repeat_interleave(group, dim=1)
        weights = torch.softmax(torch.einsum("bhd,bhjd->bhj", q[:, :, i], keys) * scaling, dim=-1)
        expected[:, i] = torch.einsum("bhj,bhjd->bhd", weights, values)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    # the new pairs recorded for writing are the keys before rotation, as projected
    torch.testing.assert_close(layer.keys, hf.unrotate(k, cos[:, None], sin[:, None]), rtol=1e-5, atol=1e-5)
    # a very negative bias leaves the memory out; queries that may not read it get the local output exactly
    torch.nn.init.constant_(layer.params.gate.bias, -1e4)
    with torch.no_grad():
        off = read.read(layer, q, k, v, local.transpose(1, 2), 0.0, attention_mask=None, scaling=scaling)
    torch.testing.assert_close(off, local.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_unrotate_inverts_the_rotary_embedding_at_any_position():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    rotary = LlamaRotaryEmbedding(hf_config("llama"))
    positions = torch.tensor([[0, 1, 7, 100, 5000, 65000]])
    cos, sin = rotary(torch.empty(0), positions)
    x = torch.randn(1, 2, 6, 8)
    rotated, _ = apply_rotary_pos_emb(x, x, cos, sin)
    assert not torch.allclose(rotated[:, :, 1:], x[:, :, 1:])
    torch.testing.assert_close(hf.unrotate(rotated, cos[:, None], sin[:, None]), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ("llama", "gpt2"))
@pytest.mark.parametrize("combine", COMBINES)
def test_read_then_write_a_segment_never_retrieves_itself(tmp_path, family, combine):
    folder = saved_model(tmp_path, family)
    plain, model = plain_model(folder), memory_model(folder, combine, max_knn_memories=64)
    x = torch.randint(4, 64, (2, 8))
    knn = model.create_knn_memories(batch_size=2)
    with torch.no_grad():
        first, _ = model(x, knn_memories=knn)  # the memory was empty while x read it, though x then wrote 8 pairs
        assert knn[0].count.tolist() == [8, 8]
        torch.testing.assert_close(first, plain(x).logits, rtol=1e-6, atol=1e-6)
        again, _ = model(x, knn_memories=knn)  # now x's own pairs are there, from the previous call
    assert not torch.allclose(again, first)
    assert knn[0].count.tolist() == [16, 16]


@pytest.mark.parametrize("family", ("llama", "gpt2"))
@pytest.mark.parametrize("combine", COMBINES)
def test_a_document_start_clears_the_memory_and_hides_the_earlier_document(tmp_path, family, combine):
    folder = saved_model(tmp_path, family)
    plain, model = plain_model(folder), memory_model(folder, combine, max_knn_memories=64)
    knn = model.create_knn_memories(batch_size=2)
    first = torch.randint(4, 64, (2, 8))
    second = torch.randint(4, 64, (2, 8))
    second[0, 3] = SOS  # row 0: a new document starts at position 3; row 1 continues its document
    with torch.no_grad():
        model(first, knn_memories=knn)
        before = copy.deepcopy(knn)
        logits, _ = model(second, knn_memories=knn)
        # the new document's tokens see neither the memory nor the earlier tokens: as the model on it alone
        torch.testing.assert_close(logits[0, 3:], plain(second[:1, 3:]).logits[0], rtol=1e-5, atol=1e-5)
        # the earlier document's tokens still read the memory it wrote
        earlier, _ = model(second[:, :3], knn_memories=before)
        torch.testing.assert_close(logits[:, :3], earlier, rtol=1e-5, atol=1e-5)
    assert knn[0].count.tolist() == [5, 16]  # row 0 holds only the new document (its start and 4 tokens)


# ----------------------------------------------------------------------------------------------- generation
def teacher_forced_logits(model, sequence, seq_len):
    pieces = (Batch(piece, piece) for piece in sequence.split(seq_len, dim=1))
    return torch.cat([logits for _, logits in read_stream(model, pieces, memory_size=None)], dim=1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("combine", COMBINES)
def test_greedy_generation_matches_teacher_forcing(tmp_path, family, combine):
    model = memory_model(saved_model(tmp_path, family), combine)
    prompt = torch.randint(4, 64, (2, 13))
    prompt[1, :3] = PAD  # a shorter prompt, padded on the left
    prompt[1, 3] = SOS
    out = model.generate(prompt, max_new_tokens=17, seq_len=6, temperature=0.0, return_logits=True)
    sequence = torch.cat((prompt, out.tokens), dim=1)
    predicted = teacher_forced_logits(model, sequence, seq_len=6)[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(out.logits, predicted, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.tokens, predicted.argmax(-1))
    assert out.state.knn_memories[0].count.tolist()[0] == 16  # the memory overflowed while streaming
    assert out.state.xl_memories is None and out.state.pending is None  # 13 + 17 tokens read: five whole segments


def test_generation_with_the_memory_off_is_the_plain_model_segment_by_segment(tmp_path):
    folder = saved_model(tmp_path, "llama")
    plain, model = plain_model(folder), memory_model(folder)
    prompt = torch.randint(4, 64, (1, 7))
    out = model.generate(prompt, max_new_tokens=8, seq_len=5, temperature=0.0, use_knn_memory=False)
    sequence = torch.cat((prompt, out.tokens), dim=1)
    with torch.no_grad():
        reference = torch.cat([plain(piece).logits for piece in sequence.split(5, dim=1)], dim=1)
    assert torch.equal(out.tokens, reference[:, prompt.shape[1] - 1 : -1].argmax(-1))


# -------------------------------------------------------------------------------------------- save and load
@pytest.mark.parametrize("family", ("qwen2", "gpt2"))
def test_save_and_load_round_trip(tmp_path, family):
    model = memory_model(saved_model(tmp_path, family), knn_gate_bias_init=-1.0)
    with torch.no_grad():
        for layer in model.memory_layers.values():
            layer.log_scale.add_(torch.randn_like(layer.log_scale))
    folder = model.save_pretrained(tmp_path / "saved", train_config={"seq_len": 8})
    assert {"config.json", "model.safetensors", hf.MEMORY_CONFIG_FILE, hf.MEMORY_WEIGHTS_FILE, "train_config.json"} <= {
        p.name for p in folder.iterdir()}
    loaded = MemorizingHFModel.from_pretrained(folder).eval()
    assert loaded.config == model.config
    stream = torch.randint(4, 64, (2, 2, 8))
    knn_a, knn_b = model.create_knn_memories(batch_size=2), loaded.create_knn_memories(batch_size=2)
    with torch.no_grad():
        for segment in stream.unbind(1):
            torch.testing.assert_close(loaded(segment, knn_memories=knn_b)[0], model(segment, knn_memories=knn_a)[0])
        # the folder is also the plain model for transformers
        torch.testing.assert_close(plain_model(folder)(stream[:, 0]).logits, model(stream[:, 0])[0])
    bigger = MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(**{**model.config.to_dict(), "max_knn_memories": 99}))
    assert bigger.config.max_knn_memories == 99  # search settings may change
    with pytest.raises(ValueError, match="memory parameters do not fit"):
        MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(memorizing_layers=(1,)))


# ------------------------------------------------------------------------------------------------- training
@pytest.mark.parametrize("only_new", (True, False))
def test_training_with_our_loop_changes_only_what_it_should(tmp_path, only_new):
    from memorizing_transformers_pytorch.train import TrainConfig, Trainer

    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        (data / f"file{i}.txt").write_text(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" * 20)
    model = memory_model(saved_model(tmp_path, "gpt2", vocab=256), max_knn_memories=64)  # tied embeddings
    if only_new:
        model.train_only_memory_parameters()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    config = TrainConfig(data=str(data), run_dir=str(tmp_path / "run"), seq_len=16, batch_size=2, steps=3, lr=1e-2,
                         warmup_steps=0, checkpoint_every=0, log_every=1)
    summary = Trainer(model.config, config, model=model, progress=False).run()
    assert summary["step"] == 3
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    new = {name for name, _ in model.memory_layers.named_parameters(prefix="memory_layers")}
    assert new <= changed
    if only_new:
        assert changed == new
    else:
        assert "hf.transformer.h.0.attn.c_attn.weight" in changed
    # the run's checkpoint (with GPT-2's tied embeddings) resumes into a fresh model of the same set-up
    fresh = memory_model(saved_model(tmp_path / "fresh", "gpt2", vocab=256), max_knn_memories=64)
    if only_new:
        fresh.train_only_memory_parameters()
    resumed = Trainer(model.config, TrainConfig(**{**config.to_dict(), "steps": 4}), model=fresh, progress=False)
    resumed.restore()
    assert resumed.step_count == 3
    for name, p in resumed.model.named_parameters():
        torch.testing.assert_close(p, dict(model.named_parameters())[name])


def test_token_level_training_with_the_models_own_tokenizer_from_text_and_shards_then_resume_and_save(tmp_path):
    """A pretrained folder with its own tokenizer (no new special tokens): our Trainer reads token data from text
    and from shards, checkpoints with the tokenizer, resumes, and the result saves as a model folder."""
    from memorizing_transformers_pytorch.cli import main
    from memorizing_transformers_pytorch.tokenizer import train_tokenizer
    from memorizing_transformers_pytorch.train import TrainConfig, Trainer

    data = tmp_path / "data"
    data.mkdir()
    for i in range(40):
        (data / f"file{i}.txt").write_text(f"def function_{i}(x):\n    return x * {i} + {i % 7}\n" * 20)
    tokenizer = train_tokenizer([f"def function_{i}(x): return x * {i}" for i in range(200)], vocab_size=300)
    folder = tmp_path / "pretrained"
    AutoModelForCausalLM.from_config(hf_config("llama", vocab=tokenizer.num_tokens)).save_pretrained(folder)
    tokenizer.save(folder)  # tokenizer.json and tokenizer_config.json, as a Hugging Face folder has them
    model = MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(memorizing_layers=(2,), max_knn_memories=64))
    assert model.tokenizer is not None
    model = MemorizingHFModel.from_pretrained(folder)  # the memory config's ids come from the tokenizer
    assert (model.config.clear_memories_on_sos_token_id, model.config.pad_id) == (tokenizer.sos_id, tokenizer.pad_id)
    shards = tmp_path / "shards"
    main(["prepare", "--data", str(data), "--tokenizer", str(folder), "--out", str(shards)])
    for source in (str(data), f"shards:{shards}"):
        run = tmp_path / f"run_{source[:6]}"
        config = TrainConfig(data=source, tokenizer=str(folder) if source == str(data) else "", run_dir=str(run),
                             seq_len=16, batch_size=2, steps=2, lr=1e-2, warmup_steps=0, checkpoint_every=0, log_every=1)
        assert Trainer(model.config, config, model=model, progress=False).run()["step"] == 2
        resumed = Trainer(model.config, TrainConfig(**{**config.to_dict(), "steps": 3}),
                          model=MemorizingHFModel.from_pretrained(folder), progress=False)
        resumed.restore()
        assert resumed.step_count == 2 and resumed.run()["step"] == 3
    saved = resumed.model.save_pretrained(tmp_path / "trained", train_config=config.to_dict())
    again = MemorizingHFModel.from_pretrained(saved)
    assert again.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    for name, p in again.named_parameters():
        torch.testing.assert_close(p, dict(resumed.model.named_parameters())[name])
    # a model whose vocabulary is smaller than the tokenizer's is refused before training
    small = MemorizingHFModel(AutoModelForCausalLM.from_config(hf_config("llama", vocab=64)),
                              HFMemoryConfig(clear_memories_on_sos_token_id=tokenizer.sos_id))
    with pytest.raises(ValueError, match=r"a vocabulary of 64 tokens \(the tokenizer has 300\)"):
        Trainer(small.config, TrainConfig(data=str(data), tokenizer=str(folder), run_dir=str(tmp_path / "bad")),
                model=small, progress=False)


def test_weight_decay_spares_the_new_gate_and_temperature(tmp_path):
    from memorizing_transformers_pytorch.train import TrainConfig, Trainer

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("x = 1\n" * 50)
    model = memory_model(saved_model(tmp_path, "llama", vocab=256), max_knn_memories=64)
    config = TrainConfig(data=str(tmp_path / "data"), run_dir=str(tmp_path / "run"), seq_len=16, batch_size=1,
                         steps=1, weight_decay=0.1)
    trainer = Trainer(model.config, config, model=model, progress=False)
    decayed = {id(p) for group in trainer.optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]}
    new = dict(model.memory_layers.named_parameters())
    assert new and not any(id(p) in decayed for p in new.values())  # gate biases and temperatures, (H, 1, 1) each
    assert id(model.hf.model.layers[0].mlp.up_proj.weight) in decayed


# --------------------------------------------------------------------------------------------------- errors
def test_unsupported_architectures_are_refused(tmp_path):
    torch.manual_seed(0)
    neox = AutoModelForCausalLM.from_config(GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=4, intermediate_size=64))
    with pytest.raises(ValueError, match="unsupported architecture 'gpt_neox'"):
        MemorizingHFModel(neox)
    neox.save_pretrained(tmp_path / "neox")
    with pytest.raises(ValueError, match="unsupported architecture 'gpt_neox'"):
        MemorizingHFModel.from_pretrained(tmp_path / "neox")
    from transformers import LlamaModel

    with pytest.raises(ValueError, match="no language-model head"):
        MemorizingHFModel(LlamaModel(hf_config("llama")))
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        MemorizingHFModel.from_pretrained(tmp_path / "missing")


def test_layer_numbers_out_of_range_are_refused(tmp_path):
    folder = saved_model(tmp_path, "llama")
    with pytest.raises(ValueError, match=r"layer numbers in 1\.\.2 .* got 3"):
        MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(memorizing_layers=(3,)))
    with pytest.raises(ValueError, match="from 1"):
        HFMemoryConfig(memorizing_layers=(0,))
    with pytest.raises(ValueError, match="repeat"):
        HFMemoryConfig(memorizing_layers=(1, 1))
    assert MemorizingHFModel.from_pretrained(folder).config.memorizing_layers == (1, 2)  # default ("joint"): every layer
    gate = HFMemoryConfig(knn_combine="gate")
    assert MemorizingHFModel.from_pretrained(folder, gate).config.memorizing_layers == (1,)  # "gate": 3/4 up, at least 1
    with pytest.raises(ValueError, match="below the model's vocab_size=64"):
        MemorizingHFModel.from_pretrained(folder, HFMemoryConfig(pad_id=64))


def test_inputs_it_cannot_take_are_refused(tmp_path):
    model = memory_model(saved_model(tmp_path, "gpt2"))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 64\)"):
        model(torch.tensor([[1, 64]]))
    with pytest.raises(ValueError, match="no XL cache"):
        model(torch.tensor([[1, 2]]), xl_memories=())
    with pytest.raises(ValueError, match="batch size"):
        model(torch.tensor([[1, 2]]), knn_memories=model.create_knn_memories(batch_size=2))
    with pytest.raises(ValueError, match="n_positions"):
        model(torch.randint(4, 64, (1, 129)))
    mistral = memory_model(saved_model(tmp_path, "mistral"))
    with pytest.raises(ValueError, match="sliding window"):
        mistral(torch.randint(4, 64, (1, 65)))


def test_a_tokenizer_for_another_vocabulary_is_refused(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    bpe.train_from_iterator(["def f(x): return x + 1\n" * 50, "class A: pass\n" * 50],
                            tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "<s>"],
                                                           initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    small = memory_model(saved_model(tmp_path, "llama"))  # 64 ids
    with pytest.raises(ValueError, match=f"tokenizer has {bpe.get_vocab_size()} tokens but the model's vocabulary has 64"):
        check_tokenizer(bpe, small.num_tokens)
    with pytest.raises(ValueError, match="bytes"):
        check_tokenizer(None, small.num_tokens)  # without a tokenizer the input is bytes: 256 ids
    large = memory_model(saved_model(tmp_path / "large", "llama", vocab=bpe.get_vocab_size()))
    check_tokenizer(bpe, large.num_tokens)
    check_tokenizer(None, memory_model(saved_model(tmp_path / "bytes", "llama", vocab=256)).num_tokens)


# ----------------------------------------------------------------------------------------------- command line
def test_the_command_line_evaluates_and_generates_from_a_model_folder(tmp_path, capsys):
    from memorizing_transformers_pytorch.cli import main

    data = tmp_path / "data"
    data.mkdir()
    for i in range(30):
        (data / f"module{i}.py").write_text(f"import os\n\ndef f{i}(path):\n    return os.path.join(path, '{i}')\n" * 8)
    model = memory_model(saved_model(tmp_path, "llama", vocab=256))
    folder = model.save_pretrained(tmp_path / "byte_llama", train_config={"seq_len": 32})
    main(["eval", "--checkpoint", str(folder), "--eval-data", str(data), "--split", "train", "--max-docs", "2",
          "--memory-sizes", "0,64", "--output", str(tmp_path / "eval")])
    printed = capsys.readouterr().out
    assert "memory size 64" in printed and (tmp_path / "eval" / "eval.json").is_file()
    main(["generate", "--checkpoint", str(folder), "--prompt", "def ", "--max-new-tokens", "5", "--temperature", "0"])
    assert capsys.readouterr().out.startswith("def ")


def test_the_command_line_uses_the_folders_tokenizer(tmp_path, capsys):
    pytest.importorskip("tokenizers")

    from memorizing_transformers_pytorch.cli import main

    tokenizer = hf_bpe_tokenizer("def f(x):\n    return x + 1\n" * 50, vocab_size=120)
    folder = saved_model(tmp_path, "llama", vocab=len(tokenizer))
    tokenizer.save_pretrained(folder)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(30):
        (data / f"m{i}.py").write_text(f"def f(x):\n    return x + {i}\n" * 10)
    main(["eval", "--checkpoint", folder, "--eval-data", str(data), "--split", "train", "--max-docs", "2",
          "--memory-sizes", "0,64", "--seq-len", "16", "--output", str(tmp_path / "eval")])
    assert "memory size 64" in capsys.readouterr().out
    main(["generate", "--checkpoint", folder, "--prompt", "def f", "--max-new-tokens", "4", "--temperature", "0"])
    assert capsys.readouterr().out.startswith("def f")


def test_the_core_package_imports_without_transformers():
    code = ("import sys, memorizing_transformers_pytorch, memorizing_transformers_pytorch.hf, "
            "memorizing_transformers_pytorch.cli\nprint('transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_aligned_generation_reads_the_prompts_end_in_its_last_segment(tmp_path):
    model = memory_model(saved_model(tmp_path, "llama"), combine="joint", max_knn_memories=256)
    prompt = torch.randint(4, 64, (1, 70))  # 70 = 4 x 16 + 6: unaligned, the last segment would hold 6 tokens
    seen = []
    out = model.generate_aligned(prompt, max_new_tokens=4, seq_len=16, temperature=0.0,
                                 on_read=lambda read, total: seen.append((read, total)))
    knn = model.create_knn_memories(batch_size=1)  # by hand: 70 - 12 = 58 = 10 + 3 x 16; a first segment of 10
    model.generate(prompt[:, :10], max_new_tokens=0, state=StreamState(seq_len=10, knn_memories=knn))
    by_hand = model.generate(prompt[:, 10:], max_new_tokens=4, temperature=0.0,
                             state=StreamState(seq_len=16, knn_memories=knn))
    assert torch.equal(out.tokens, by_hand.tokens) and seen[-1] == (70, 70)
    # 58 tokens read before the last segment, which the 12 prompt tokens and the 4 new ones fill: all in memory
    assert int(out.state.knn_memories[0].count[0]) == 74
    off = model.generate_aligned(prompt, max_new_tokens=4, seq_len=16, temperature=0.0, use_knn_memory=False)
    tail = model.generate(prompt[:, -12:], max_new_tokens=4, seq_len=16, temperature=0.0, use_knn_memory=False)
    assert torch.equal(off.tokens, tail.tokens)
