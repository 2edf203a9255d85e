"""Tokenizers: the byte-level BPE trained here, tokenizer.json files from elsewhere, and bytes."""

import numpy as np
import pytest
import tokenizers

from memorizing_transformers_pytorch.data import PAD_ID, SOS_ID, _clean
from memorizing_transformers_pytorch.tokenizer import (
    BYTES,
    HuggingFaceTokenizer,
    check_same_tokenizer,
    encoding_throughput,
    load_tokenizer,
    train_tokenizer,
)

TEXTS = [
    "def add(x, y):\n    return x + y  # naïve, 日本語, \U0001f600\n" * 20,
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n" * 20,
    "literal special tokens stay text: <s> <pad> </s>\n" * 5,
]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(TEXTS, vocab_size=320)


def test_trained_bpe_has_padding_0_document_start_1_and_the_vocabulary_size_asked(bpe):
    assert (bpe.num_tokens, bpe.pad_id, bpe.sos_id) == (320, 0, 1)
    assert bpe.model_fields() == {"num_tokens": 320, "pad_id": 0, "clear_memories_on_sos_token_id": 1}


def test_encoding_is_lossless_and_never_yields_a_special_id(bpe):
    for text in TEXTS:
        ids = bpe.encode(text)
        assert ids.dtype == np.uint16
        assert bpe.decode(ids) == text
        assert not np.isin(ids, [bpe.pad_id, bpe.sos_id]).any()  # "<s>" in the text is text


def test_token_bytes_add_up_to_the_utf8_length_of_the_text(bpe):
    for text in TEXTS:
        assert int(bpe.token_bytes[bpe.encode(text)].sum()) == len(text.encode("utf-8"))
    assert bpe.token_bytes[bpe.pad_id] == bpe.token_bytes[bpe.sos_id] == 0


@pytest.mark.parametrize("tokenizer", ["bpe", "bytes"])
def test_the_stream_decoder_gives_back_the_text_token_by_token(tokenizer, bpe):
    tokenizer = bpe if tokenizer == "bpe" else BYTES
    text = TEXTS[0]
    decode = tokenizer.stream_decoder()
    assert "".join(decode(int(i)) for i in tokenizer.encode(text)) == text


def test_batch_encoding_equals_one_at_a_time(bpe):
    for ids, text in zip(bpe.encode_batch(TEXTS), TEXTS):
        assert np.array_equal(ids, bpe.encode(text))


def test_bytes_are_the_byte_path_of_the_data_sources():
    text = "a\x00b\x02c é"
    assert np.array_equal(BYTES.encode(text), _clean(text.encode()))
    assert (BYTES.num_tokens, BYTES.pad_id, BYTES.sos_id, BYTES.token_bytes) == (256, PAD_ID, SOS_ID, None)


def test_save_and_load_round_trip_from_a_file_or_a_folder(bpe, tmp_path):
    file = bpe.save(tmp_path / "tok.json")
    folder = tmp_path / "folder"
    folder.mkdir()
    bpe.save(folder)
    for path in (file, folder):
        again = load_tokenizer(path)
        assert again.same_vocabulary(bpe) and again.fingerprint == bpe.fingerprint
        assert np.array_equal(again.encode(TEXTS[1]), bpe.encode(TEXTS[1]))
    assert load_tokenizer("") is BYTES and load_tokenizer(None) is BYTES


def test_missing_or_bad_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)  # a folder without one
    (tmp_path / "bad.json").write_text('{"not": "a tokenizer"}')
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_bad_vocabulary_sizes_and_an_empty_corpus_are_refused():
    with pytest.raises(ValueError, match="vocab_size must be >= 258"):
        train_tokenizer(TEXTS, vocab_size=100)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_tokenizer(TEXTS, vocab_size=300.0)
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(["", ""], vocab_size=300)


def test_a_foreign_tokenizer_keeps_its_own_special_tokens_or_gets_ours():
    vocab = {"a": 0, "b": 1, "[UNK]": 2}
    plain = HuggingFaceTokenizer(tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]")))
    assert (plain.pad_id, plain.sos_id, plain.num_tokens) == (3, 4, 5)  # <pad> and <s> added at the end
    gpt2_like = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    gpt2_like.add_special_tokens(["<|endoftext|>", "[PAD]"])
    own = HuggingFaceTokenizer(gpt2_like)
    assert (own.sos_id, own.pad_id, own.num_tokens) == (3, 4, 5)


def test_differing_vocabularies_are_described(bpe):
    other = train_tokenizer(TEXTS, vocab_size=300)
    with pytest.raises(ValueError, match="300 tokens against 320"):
        check_same_tokenizer(other, bpe, "here")
    with pytest.raises(ValueError, match="against bytes"):
        check_same_tokenizer(bpe, BYTES, "here")
    check_same_tokenizer(HuggingFaceTokenizer.from_json(bpe.to_json()), bpe, "here")
    check_same_tokenizer(BYTES, BYTES, "here")


def test_throughput_counts_tokens_and_bytes(bpe):
    speed = encoding_throughput(bpe, TEXTS)
    assert speed["tokens"] == sum(len(bpe.encode(t)) for t in TEXTS)
    assert speed["bytes"] == sum(len(t.encode()) for t in TEXTS)
    assert speed["tokens_per_s"] > 0
