import pytest
import torch

from memorizing_transformers_pytorch import MemorizingTransformer
from memorizing_transformers_pytorch.knn_attention import MLPGate


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_model(**overrides) -> MemorizingTransformer:
    """A tiny CPU model; overrides are config fields."""
    config = dict(num_tokens=32, dim=32, depth=3, heads=4, dim_head=8, memorizing_layers=(2,),
                  max_knn_memories=64, num_retrieved_memories=4)
    config.update(overrides)
    model = MemorizingTransformer(**config).eval()
    for module in model.modules():
        if isinstance(module, MLPGate):  # zero-initialised; randomise so that tests see its effect
            torch.nn.init.normal_(module.mlp[2].weight)
    return model


@pytest.fixture
def corpus(tmp_path):
    """A folder of 40 small Python files (a document source for training and evaluation)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(40):
        (folder / f"doc{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x + {j}\n" for j in range(10)))
    return str(folder)


@pytest.fixture(autouse=True)
def _tokenization_cache(tmp_path_factory, monkeypatch):
    """Tokenized corpora are cached under the session's temporary folder, never in the home folder."""
    monkeypatch.setenv("MEMORIZING_TRANSFORMERS_CACHE", str(tmp_path_factory.getbasetemp() / "token-cache"))


def hf_bpe_tokenizer(text: str, vocab_size: int):
    """A byte-level BPE trained on ``text``, as a ``transformers`` tokenizer with <pad> <s> </s> <unk> (ids 0-3)."""
    import tokenizers
    from transformers import PreTrainedTokenizerFast

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel()
    bpe.decoder = tokenizers.decoders.ByteLevel()
    bpe.train_from_iterator([text], tokenizers.trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
