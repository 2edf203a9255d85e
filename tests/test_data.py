"""Document sources and document-stream batching."""

import gzip
import json
import threading
import time

import numpy as np
import pytest
import torch

from memorizing_transformers_pytorch.data import (
    IGNORE_INDEX,
    PAD_ID,
    SOS_ID,
    Batch,
    DocumentStream,
    PrefetchedStream,
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


class ReferenceStream:
    """The stream as it was first written, naively: each row keeps a list of its unread tokens, and a segment is
    the first ``seq_len + 1`` of them after appending whole documents (document-start id first) from the shared
    queue, reshuffled each epoch with ``default_rng([seed, epoch])``. Its state is the older format (``pending``)."""

    def __init__(self, documents, *, batch_size, seq_len, repeat, seed=0):
        self.documents, self.batch_size, self.seq_len, self.repeat, self.seed = documents, batch_size, seq_len, repeat, seed
        self.epoch, self.cursor, self.documents_started = 0, 0, 0
        self.order = self.order_of(0)
        self.pending = [[] for _ in range(batch_size)]

    def order_of(self, epoch):
        if not self.repeat:
            return list(range(len(self.documents)))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.documents)).tolist()

    def next_batch(self):
        tokens = [[PAD_ID] * self.seq_len for _ in range(self.batch_size)]
        labels = [[IGNORE_INDEX] * self.seq_len for _ in range(self.batch_size)]
        for row in range(self.batch_size):
            stream = self.pending[row]
            while len(stream) < self.seq_len + 1:
                if self.cursor == len(self.order):
                    if not self.repeat:
                        break
                    self.epoch, self.cursor = self.epoch + 1, 0
                    self.order = self.order_of(self.epoch)
                stream = stream + [SOS_ID] + self.documents[self.order[self.cursor]].tolist()
                self.cursor += 1
                self.documents_started += 1
            for i, token in enumerate(stream[: self.seq_len]):
                tokens[row][i] = token
            for i, token in enumerate(stream[1 : self.seq_len + 1]):
                labels[row][i] = token
            self.pending[row] = stream[self.seq_len :]
        return Batch(torch.tensor(tokens), torch.tensor(labels))

    def state_dict(self):
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed,
                "documents_started": self.documents_started, "pending": [list(p) for p in self.pending]}


def random_docs(rng, count, longest):
    return [rng.integers(3, 256, size=int(n)).astype(np.uint8) for n in rng.integers(0, longest, size=count)]


def assert_same_batch(x, y, where=""):
    assert torch.equal(x.tokens, y.tokens) and torch.equal(x.labels, y.labels), where


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4])
@pytest.mark.parametrize("seq_len", [1, 5, 16])
def test_the_stream_gives_the_reference_streams_batches_over_several_epochs(batch_size, seq_len):
    """Same order, same segmentation, same padding as the stream was first written, with documents shorter and
    longer than a segment (and empty ones), for training (several epochs) and evaluation (to the end)."""
    rng = np.random.default_rng(batch_size * 100 + seq_len)
    documents = random_docs(rng, 7, 4 * seq_len + 3) + [np.zeros(0, dtype=np.uint8)]
    stream = DocumentStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=True, seed=5)
    reference = ReferenceStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=True, seed=5)
    while reference.epoch < 4:
        assert_same_batch(stream.next_batch(), reference.next_batch(), f"epoch {reference.epoch}")
        assert stream.documents_started == reference.documents_started and stream.epoch == reference.epoch
    evaluation = DocumentStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=False)
    reference = ReferenceStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=False)
    batches = list(evaluation)
    assert batches and evaluation.exhausted
    for batch in batches:
        assert_same_batch(batch, reference.next_batch())
    assert all(len(p) <= 1 for p in reference.pending)  # the reference is done where the stream says it is


def test_a_million_token_document_keeps_a_small_state_that_resumes_exactly():
    document = np.random.default_rng(0).integers(3, 256, size=1_000_000).astype(np.uint8)
    documents = [document, document[:1000].copy()]
    stream = DocumentStream(documents, batch_size=2, seq_len=512, repeat=True, seed=3)
    for _ in range(50):
        stream.next_batch()
    state = stream.state_dict()
    assert len(json.dumps({"step": 50, "data": state, "world_size": 1}, indent=2)) < 2048  # as state.json holds it
    resumed = DocumentStream(documents, batch_size=2, seq_len=512, repeat=True, seed=3)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    for i in range(20):
        assert_same_batch(stream.next_batch(), resumed.next_batch(), f"batch {i} after resuming")


def test_a_state_of_the_older_format_is_converted_exactly():
    """The older state held each row's unread tokens; it maps to a document and an offset, and the batches that
    follow are the reference's. Unread tokens that end no document are a clear error."""
    rng = np.random.default_rng(1)
    documents = random_docs(rng, 6, 40)
    for batches in (0, 1, 3, 10, 25):
        reference = ReferenceStream(documents, batch_size=3, seq_len=8, repeat=True, seed=2)
        for _ in range(batches):
            reference.next_batch()
        stream = DocumentStream(documents, batch_size=3, seq_len=8, repeat=True, seed=2)
        stream.load_state_dict(json.loads(json.dumps(reference.state_dict())))
        for i in range(30):
            assert_same_batch(stream.next_batch(), reference.next_batch(), f"{batches} batches, then {i}")
    reference.next_batch()
    old = reference.state_dict()
    old["pending"][1] = [7] * 500
    with pytest.raises(ValueError, match="older data state: row 1's unread tokens end no document of this data; the "
                                         "data position cannot be restored: start a new run"):
        DocumentStream(documents, batch_size=3, seq_len=8, repeat=True, seed=2).load_state_dict(old)


def test_a_state_that_does_not_fit_the_data_is_a_clear_error():
    stream = DocumentStream(docs(5, 9, 2), batch_size=2, seq_len=3, repeat=True, seed=1)
    for _ in range(3):
        stream.next_batch()
    state = stream.state_dict()
    with pytest.raises(ValueError, match="over 3 documents but this data has 2"):
        DocumentStream(docs(5, 9), batch_size=2, seq_len=3, repeat=True).load_state_dict(state)
    state["rows"][0] = [1, 99]
    with pytest.raises(ValueError, match="row 0 stands at offset 99 of document 1"):
        DocumentStream(docs(5, 9, 2), batch_size=2, seq_len=3, repeat=True).load_state_dict(state)


class FailingStream:
    """A stream whose ``fail_at``-th batch raises."""

    def __init__(self, fail_at):
        self.fail_at, self.documents_started = fail_at, 0

    def next_batch(self):
        if self.documents_started == self.fail_at:
            raise ValueError(f"cannot read batch {self.fail_at}")
        self.documents_started += 1
        return Batch(torch.full((1, 2), self.documents_started), torch.zeros(1, 2, dtype=torch.long))

    def state_dict(self):
        return {"documents_started": self.documents_started}

    def load_state_dict(self, state):
        self.documents_started = state["documents_started"]


def test_prefetching_gives_the_same_batches_and_the_position_of_those_handed_out():
    documents = random_docs(np.random.default_rng(4), 9, 60)
    plain = DocumentStream(documents, batch_size=3, seq_len=8, repeat=True, seed=7)
    ahead = PrefetchedStream(DocumentStream(documents, batch_size=3, seq_len=8, repeat=True, seed=7), depth=2)
    assert ahead.state_dict() == plain.state_dict()
    for i in range(12):
        assert_same_batch(ahead.next_batch(), plain.next_batch(), f"batch {i}")
        time.sleep(0.001 * (i % 3))  # the thread runs ahead meanwhile
        assert ahead.state_dict() == plain.state_dict() and ahead.documents_started == plain.documents_started
    resumed = PrefetchedStream(DocumentStream(documents, batch_size=3, seq_len=8, repeat=True, seed=7))
    resumed.load_state_dict(ahead.state_dict())
    ahead.close()  # stops the thread and rewinds to the position handed out
    assert ahead.stream.state_dict() == plain.state_dict()
    for i in range(12):
        expected = plain.next_batch()
        assert_same_batch(resumed.next_batch(), expected, f"resumed {i}")
        assert_same_batch(ahead.next_batch(), expected, f"after close {i}")  # a new thread, from the same place
    ahead.load_state_dict(resumed.state_dict())  # while its thread runs
    assert_same_batch(ahead.next_batch(), plain.next_batch())
    for stream in (ahead, resumed):
        stream.close()
        stream.close()
    assert not any(t.name == "prefetch-batches" for t in threading.enumerate())


def test_an_error_while_prefetching_is_raised_by_the_reader_at_that_batch():
    stream = PrefetchedStream(FailingStream(fail_at=3))
    assert [int(stream.next_batch().tokens[0, 0]) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="cannot read batch 3"):
        stream.next_batch()
    assert stream.state_dict() == {"documents_started": 3} and stream._thread is None
    with pytest.raises(ValueError, match="depth must be >= 1"):
        PrefetchedStream(FailingStream(fail_at=3), depth=0)


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
