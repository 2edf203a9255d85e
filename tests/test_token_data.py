"""Token data: JSONL / Parquet / saved-dataset sources, token shards (prepare, memmap reading, checks), the
tokenization cache, and document streams with a tokenizer's ids."""

import json

import numpy as np
import pytest
import tokenizers

from memorizing_transformers_pytorch import shards
from memorizing_transformers_pytorch.data import (
    SPLITS,
    DocumentStream,
    load_documents,
    open_stream,
    prepare_shards,
    source_tokenizer,
)
from memorizing_transformers_pytorch.shards import ShardDocuments, tokenize_cached, write_shards
from memorizing_transformers_pytorch.tokenizer import BYTES, HuggingFaceTokenizer, train_tokenizer

RECORDS = [f"record {i}: " + f"def f(x): return x * {i}\n" * (1 + i % 3) for i in range(80)]


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer(RECORDS, vocab_size=300)


def all_splits(source, tokenizer=None):
    return [bytes(d).decode() if tokenizer is None else tokenizer.decode(d)
            for split in SPLITS for d in load_documents(source, split, tokenizer)]


# ------------------------------------------------------------------------------------------- record sources
def test_jsonl_gives_one_document_per_record_split_across_train_valid_test(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(RECORDS)))
    texts = all_splits(f"jsonl:{path}")
    assert sorted(texts) == sorted(RECORDS)
    assert len(load_documents(f"jsonl:{path}", "train")) > len(RECORDS) // 2


def test_jsonl_reads_the_field_named_after_the_hash_from_a_folder_of_files(tmp_path):
    for part in range(2):
        (tmp_path / f"part{part}.jsonl").write_text(
            "".join(json.dumps({"content": t}) + "\n" for t in RECORDS[part::2]))
    assert sorted(all_splits(f"jsonl:{tmp_path}#content")) == sorted(RECORDS)


def test_a_missing_jsonl_field_names_the_file_line_and_fields(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"text": "a"}) + "\n" + json.dumps({"body": "b"}) + "\n")
    with pytest.raises(ValueError, match=r"corpus.jsonl line 2 has no field 'text' \(its fields: 'body'\)"):
        load_documents(f"jsonl:{path}", "train")
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1 is not JSON"):
        load_documents(f"jsonl:{path}", "train")
    path.write_text(json.dumps({"text": 3}) + "\n")
    with pytest.raises(ValueError, match="must hold text, got int"):
        load_documents(f"jsonl:{path}", "train")


def test_an_empty_corpus_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("".join(json.dumps({"text": ""}) + "\n" for _ in range(50)))
    with pytest.raises(ValueError, match="no non-empty documents in its 'train' split"):
        load_documents(f"jsonl:{path}", "train")
    with pytest.raises(FileNotFoundError, match="ending in .jsonl"):
        load_documents(f"jsonl:{tmp_path / 'nothing'}", "train")


def test_parquet_gives_one_document_per_row_and_names_a_missing_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": RECORDS, "n": list(range(len(RECORDS)))}), tmp_path / "corpus.parquet",
                   row_group_size=16)
    assert sorted(all_splits(f"parquet:{tmp_path / 'corpus.parquet'}")) == sorted(RECORDS)
    with pytest.raises(ValueError, match=r"no column 'body' \(its columns: 'text', 'n'\)"):
        load_documents(f"parquet:{tmp_path}#body", "train")


def test_a_saved_hugging_face_dataset_gives_its_own_splits_or_is_split_by_record(tmp_path):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"text": RECORDS[:60]}), "validation": Dataset.from_dict({"text": RECORDS[60:70]}),
                 "test": Dataset.from_dict({"text": RECORDS[70:]})}).save_to_disk(str(tmp_path / "dict"))
    assert [bytes(d).decode() for d in load_documents(f"hf:{tmp_path / 'dict'}", "valid")] == RECORDS[60:70]
    Dataset.from_dict({"body": RECORDS}).save_to_disk(str(tmp_path / "one"))
    assert sorted(all_splits(f"hf:{tmp_path / 'one'}#body")) == sorted(RECORDS)
    with pytest.raises(ValueError, match="no column 'text'"):
        load_documents(f"hf:{tmp_path / 'one'}", "train")


# ------------------------------------------------------------------------------------------------- shards
def test_shards_hold_the_tokenizers_ids_and_are_read_as_memmaps(bpe, tmp_path):
    documents = [bpe.encode(t) for t in RECORDS[:10]] + [np.zeros(0, dtype=np.uint16)]
    meta = write_shards(tmp_path / "s", [("train", iter(documents))], bpe, source="test")
    assert meta["splits"]["train"] == {"documents": 10, "tokens": sum(map(len, documents)),
                                       "bytes": sum(len(t.encode()) for t in RECORDS[:10])}
    read = ShardDocuments(tmp_path / "s", "train")
    assert len(read) == 10 and meta["dtype"] == "uint16"
    assert all(isinstance(d, np.memmap) and np.array_equal(d, e) for d, e in zip(read, documents))
    assert np.array_equal(read[-1], documents[9])
    assert shards.shard_tokenizer(tmp_path / "s").same_vocabulary(bpe)
    with pytest.raises(FileExistsError):
        write_shards(tmp_path / "s", [], bpe)


def test_large_vocabularies_are_stored_as_uint32(tmp_path):
    vocab = {f"w{i}": i for i in range(70_000)}
    big = HuggingFaceTokenizer(tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0")))
    documents = [np.array([69_999, 5, 66_000], dtype=np.uint32)]
    assert write_shards(tmp_path / "s", [("train", documents)], big)["dtype"] == "uint32"
    assert ShardDocuments(tmp_path / "s", "train")[0].tolist() == [69_999, 5, 66_000]


def test_ids_beyond_num_tokens_in_a_shard_are_refused(bpe, tmp_path):
    write_shards(tmp_path / "s", [("train", [bpe.encode(t) for t in RECORDS[:3]])], bpe)
    ids = np.memmap(tmp_path / "s" / "train.bin", dtype="<u2", mode="r+")
    ids[5] = 301
    ids.flush()
    del ids
    with pytest.raises(ValueError, match="holds id 301 at position 5, beyond num_tokens=300"):
        ShardDocuments(tmp_path / "s", "train")
    with pytest.raises(ValueError, match="beyond num_tokens=256 of the model"):
        ShardDocuments(tmp_path / "s", "train", num_tokens=256)


def test_shards_that_do_not_match_their_meta_or_are_missing_are_clear_errors(bpe, tmp_path):
    write_shards(tmp_path / "s", [("train", [bpe.encode(t) for t in RECORDS[:3]])], bpe)
    with open(tmp_path / "s" / "train.bin", "r+b") as file:
        file.truncate(10)
    with pytest.raises(ValueError, match="does not match its offsets and meta.json"):
        ShardDocuments(tmp_path / "s", "train")
    with pytest.raises(ValueError, match="no 'test' split"):
        ShardDocuments(tmp_path / "s", "test")
    with pytest.raises(FileNotFoundError, match="memorizing-transformers prepare"):
        load_documents(f"shards:{tmp_path / 'none'}", "train")


def test_prepare_tokenizes_every_split_and_shards_read_back_as_the_text(bpe, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(RECORDS):
        (corpus / f"d{i}.txt").write_text(text)  # these 80 names fall in every split
    meta = prepare_shards(str(corpus), tmp_path / "s", bpe, progress=False)
    assert set(meta["splits"]) == set(SPLITS)
    source = f"shards:{tmp_path / 's'}"
    assert source_tokenizer(source).same_vocabulary(bpe)  # the tokenizer comes with the shards
    for split in SPLITS:
        texts = [bytes(d).decode() for d in load_documents(str(corpus), split)]
        read = load_documents(source, split)
        assert [bpe.decode(d) for d in read] == texts
        assert meta["splits"][split]["bytes"] == sum(len(t.encode()) for t in texts)
    with pytest.raises(FileExistsError):
        prepare_shards(str(corpus), tmp_path / "s", bpe, progress=False)
    prepare_shards(str(corpus), tmp_path / "s", bpe, replace=True, progress=False)


def test_shards_refuse_another_tokenizer(bpe, tmp_path):
    write_shards(tmp_path / "s", [("train", [bpe.encode(t) for t in RECORDS[:3]])], bpe)
    other = train_tokenizer(RECORDS, vocab_size=290)
    other_path = other.save(tmp_path / "other.json")
    with pytest.raises(ValueError, match="the tokenizer does not match"):
        load_documents(f"shards:{tmp_path / 's'}", "train", other)
    with pytest.raises(ValueError, match="other.json"):
        source_tokenizer(f"shards:{tmp_path / 's'}", other_path)
    with pytest.raises(ValueError, match="256 byte tokens against 300 tokens"):
        load_documents(f"shards:{tmp_path / 's'}", "train", BYTES)


# ---------------------------------------------------------------------------------- tokenization cache
def test_text_read_with_a_tokenizer_is_tokenized_once_then_read_from_the_cache(bpe, tmp_path, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, text in enumerate(RECORDS):
        (corpus / f"doc{i}.py").write_text(text)
    first = load_documents(str(corpus), "train", bpe)
    assert isinstance(first, ShardDocuments)
    assert [bpe.decode(d) for d in first] == [bytes(d).decode() for d in load_documents(str(corpus), "train")]

    def no_encoding(texts):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(bpe, "encode_batch", no_encoding)
    again = load_documents(str(corpus), "train", bpe)
    assert again.folder == first.folder
    (corpus / "doc0.py").write_text("changed text\n")  # other text: another cache entry
    changed = [bytes(d) for d in load_documents(str(corpus), "train")]
    with pytest.raises(AssertionError, match="tokenized again"):
        tokenize_cached([np.frombuffer(d, dtype=np.uint8) for d in changed], bpe, split="train", progress=False)


# -------------------------------------------------------------------------------------- document streams
def test_document_streams_use_the_tokenizers_document_start_and_padding_ids():
    documents = [np.array([300, 301, 302], dtype=np.uint16), np.array([400], dtype=np.uint16)]
    stream = DocumentStream(documents, batch_size=1, seq_len=4, repeat=False, sos_id=7, pad_id=5)
    tokens = np.concatenate([b.tokens[0].numpy() for b in stream])
    assert tokens.tolist() == [7, 300, 301, 302, 7, 400, 5, 5]


def test_open_stream_reads_shards_with_their_own_ids(bpe, tmp_path):
    write_shards(tmp_path / "s", [("train", [bpe.encode(t) for t in RECORDS[:4]])], bpe)
    batch = open_stream(f"shards:{tmp_path / 's'}", "train", batch_size=2, seq_len=8, repeat=False).next_batch()
    assert batch.tokens[:, 0].tolist() == [bpe.sos_id, bpe.sos_id]


def test_sources_that_make_their_own_byte_batches_take_no_tokenizer(bpe, monkeypatch):
    from memorizing_transformers_pytorch import data

    monkeypatch.setitem(data.SOURCES, "own", data.Source(stream=lambda *args, **kwargs: None))
    with pytest.raises(ValueError, match="takes no tokenizer"):
        open_stream("own", "train", batch_size=1, seq_len=4, tokenizer=bpe)
    with pytest.raises(ValueError, match="makes its own batches"):
        load_documents("own", "train")
