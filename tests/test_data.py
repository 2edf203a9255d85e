"""Document sources and document-stream batching."""

import gzip

import numpy as np
import pytest

from memorizing_transformers_pytorch.data import (
    IGNORE_INDEX,
    PAD_ID,
    SOS_ID,
    DocumentStream,
    enwik8_documents,
    folder_documents,
    load_documents,
    stdlib_documents,
)


def docs(*lengths):
    return [np.full(n, 10 + i, dtype=np.uint8) for i, n in enumerate(lengths)]


def test_rows_follow_their_own_documents_and_boundaries_only_in_their_row():
    stream = DocumentStream(docs(10, 3, 7), batch_size=2, seq_len=4, repeat=False)
    rows = [[], []]
    starts = [[], []]
    for batch in stream:
        for r in range(2):
            rows[r].extend(batch.tokens[r].tolist())
            starts[r].append(bool((batch.tokens[r] == SOS_ID).any()))
    # row 0 takes doc 0 (10 tokens), row 1 doc 1 (3) then doc 2 (7)
    assert [t for t in rows[0] if t != PAD_ID] == [SOS_ID] + [10] * 10
    assert [t for t in rows[1] if t != PAD_ID] == [SOS_ID] + [11] * 3 + [SOS_ID] + [12] * 7
    assert starts[0] == [True, False, False]
    assert starts[1] == [True, True, False]


def test_labels_are_the_next_tokens_across_segment_boundaries():
    stream = DocumentStream([np.arange(3, 13, dtype=np.uint8)], batch_size=1, seq_len=4, repeat=False)
    batches = list(stream)
    flat_tokens = np.concatenate([b.tokens[0].numpy() for b in batches])
    flat_labels = np.concatenate([b.labels[0].numpy() for b in batches])
    real = flat_labels != IGNORE_INDEX
    assert (flat_labels[real] == flat_tokens[1 : 1 + real.sum()]).all()
    assert real.sum() == 10  # every byte is predicted once, nothing past the end
    assert (flat_labels[flat_tokens == PAD_ID] == IGNORE_INDEX).all()  # padding is never scored


def test_each_document_read_exactly_once_in_evaluation():
    documents = docs(5, 9, 2, 8, 1)
    stream = DocumentStream(documents, batch_size=3, seq_len=4, repeat=False)
    counted = sum(int((b.tokens != PAD_ID).sum()) for b in stream)
    assert counted == sum(len(d) + 1 for d in documents)
    assert stream.exhausted


def test_training_stream_repeats_and_resumes_from_its_state():
    a = DocumentStream(docs(5, 9, 2), batch_size=2, seq_len=3, repeat=True, seed=1)
    for _ in range(7):
        a.next_batch()
    b = DocumentStream(docs(5, 9, 2), batch_size=2, seq_len=3, repeat=True, seed=1)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        x, y = a.next_batch(), b.next_batch()
        assert (x.tokens == y.tokens).all() and (x.labels == y.labels).all()
    assert a.epoch >= 1
    with pytest.raises(ValueError):
        DocumentStream(docs(5), batch_size=3, seq_len=3, repeat=True).load_state_dict(a.state_dict())


def test_stdlib_split_is_deterministic_and_disjoint():
    train = stdlib_documents("train")
    test = stdlib_documents("test")
    assert len(train) > 10 * len(test) > 0
    assert stdlib_documents("test")[0].tobytes() == test[0].tobytes()
    assert not any((d == SOS_ID).any() or (d == PAD_ID).any() for d in test)


def test_folder_and_glob_sources(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i}.txt").write_text(f"document {i}\n" * 3)
    from_folder = sum(len(folder_documents(tmp_path, s)) for s in ("train", "valid", "test"))
    from_glob = sum(len(folder_documents(str(tmp_path / "*.txt"), s)) for s in ("train", "valid", "test"))
    assert from_folder == from_glob == 60


def test_enwik8_style_file(tmp_path):
    path = tmp_path / "enwik8.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"<page>hello</page>" * 1000)
    train = enwik8_documents(path, "train")
    assert sum(len(d) for d in train) == int(18000 * 0.9)


@pytest.mark.parametrize("source", ["/no/such/folder", "enwik8:/no/such/file"])
def test_missing_sources_name_the_path(source):
    with pytest.raises(FileNotFoundError, match="/no/such"):
        load_documents(source, "train")


def test_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises((ValueError, FileNotFoundError), match="no"):
        load_documents(str(tmp_path), "train")


def test_bad_split():
    with pytest.raises(ValueError, match="split"):
        stdlib_documents("dev")
