"""Incremental decoding against a teacher-forced, segment-by-segment forward pass."""

import pytest
import torch
from conftest import tiny_model

from memorizing_transformers_pytorch.data import Batch
from memorizing_transformers_pytorch.evaluate import read_stream

PAD, SOS = 0, 2


def teacher_forced_logits(model, sequence, seq_len, memory_size=None):
    """Logits of a plain segment-by-segment forward pass over the whole sequence (memory_size 0: memory off)."""
    pieces = (Batch(piece, piece) for piece in sequence.split(seq_len, dim=1))
    return torch.cat([logits for _, logits in read_stream(model, pieces, memory_size=memory_size)], dim=1)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),  # kNN memory, no XL
        dict(xl_max_memories=6),  # XL + kNN, memory overflows (max 16)
        dict(xl_max_memories=6, kv_heads=2, knn_gate="joint"),
        dict(xl_max_memories=6, knn_gate="mlp"),  # distances to memories, token by token
        dict(xl_max_memories=6, knn_gate="joint", memory_rel_pos_bias=True),
        dict(memorizing_layers=(), xl_max_memories=4),  # XL only
        dict(xl_max_memories=6, token_shift=3),  # the embeddings of the tokens before, token by token
    ],
)
def test_greedy_generation_matches_teacher_forcing(overrides):
    seq_len = 5
    model = tiny_model(max_knn_memories=16, pad_id=PAD, **overrides)
    prompt = torch.randint(3, 32, (2, 7))
    prompt[1, :3] = PAD  # row 1 has a shorter prompt, padded on the left
    out = model.generate(prompt, max_new_tokens=23, seq_len=seq_len, temperature=0.0, return_logits=True)
    assert out.tokens.shape == (2, 23)
    sequence = torch.cat((prompt, out.tokens), dim=1)
    reference = teacher_forced_logits(model, sequence, seq_len)
    predicted = reference[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(out.logits, predicted, rtol=1e-4, atol=1e-4)
    assert torch.equal(out.tokens, predicted.argmax(-1))
    if model.config.memorizing_layers:
        assert out.state.knn_memories[0].count.tolist()[0] == 16  # the memory overflowed


def test_generation_with_the_memory_off_matches_a_forward_pass_without_memory():
    seq_len = 5
    model = tiny_model(max_knn_memories=16, xl_max_memories=6, pad_id=PAD)
    prompt = torch.randint(3, 32, (2, 12))
    out = model.generate(prompt, max_new_tokens=9, seq_len=seq_len, temperature=0.0, return_logits=True,
                         use_knn_memory=False)
    assert out.state.knn_memories is None
    sequence = torch.cat((prompt, out.tokens), dim=1)
    predicted = teacher_forced_logits(model, sequence, seq_len, memory_size=0)[:, prompt.shape[1] - 1 : -1]
    torch.testing.assert_close(out.logits, predicted, rtol=1e-4, atol=1e-4)
    with_memory = model.generate(prompt, max_new_tokens=9, seq_len=seq_len, temperature=0.0, return_logits=True)
    assert not torch.allclose(with_memory.logits, out.logits)  # the memory was read in the other run
    with pytest.raises(ValueError, match="use_knn_memory"):
        model.generate(prompt, max_new_tokens=1, use_knn_memory=False, state=with_memory.state)


def test_generation_continues_from_returned_state():
    seq_len = 4
    model = tiny_model(xl_max_memories=4, pad_id=PAD)
    prompt = torch.randint(3, 32, (1, 6))
    first = model.generate(prompt, max_new_tokens=5, seq_len=seq_len, temperature=0.0)
    more = model.generate(torch.tensor([[5]]), max_new_tokens=4, seq_len=seq_len, temperature=0.0, state=first.state)
    together = model.generate(torch.cat((prompt, first.tokens, torch.tensor([[5]])), dim=1), max_new_tokens=4,
                              seq_len=seq_len, temperature=0.0)
    assert torch.equal(more.tokens, together.tokens)


def test_generation_continued_over_calls_matches_teacher_forcing():
    """Three calls, each continuing the state the previous one returned (a pending segment mid-way, then none at
    a segment boundary), two rows, XL and kNN memories that overflow, and a document start fed mid-segment: the
    logits of one teacher-forced, segment-by-segment pass over everything read."""
    seq_len = 6
    model = tiny_model(max_knn_memories=16, xl_max_memories=4, pad_id=PAD, clear_memories_on_sos_token_id=SOS)
    prompt = torch.randint(3, 32, (2, 9))
    prompt[1, :2] = PAD
    calls = [(prompt, 6), (torch.tensor([[7, SOS, 8], [9, 10, 11]]), 18), (torch.tensor([[5], [6]]), 10)]
    state, read, expected_positions, outputs, pending_lengths = None, [], [], [], []
    for feed, new_tokens in calls:
        out = model.generate(feed, max_new_tokens=new_tokens, seq_len=seq_len, temperature=0.0, return_logits=True,
                             state=state)
        state = out.state
        before = sum(piece.shape[1] for piece in read)
        expected_positions.append(range(before + feed.shape[1] - 1, before + feed.shape[1] - 1 + new_tokens))
        read += [feed, out.tokens]
        outputs.append(out)
        pending_lengths.append(None if out.state.pending is None else out.state.pending.tokens.length)
    assert pending_lengths == [3, None, 5]
    reference = teacher_forced_logits(model, torch.cat(read, dim=1), seq_len)
    for out, positions in zip(outputs, expected_positions):
        predicted = reference[:, positions]
        torch.testing.assert_close(out.logits, predicted, rtol=1e-4, atol=1e-4)
        assert torch.equal(out.tokens, predicted.argmax(-1))
    assert outputs[-1].state.knn_memories[0].count.tolist()[1] == 16  # the memory overflowed


def test_each_token_is_written_into_the_pending_segments_buffers_in_place():
    """Reading a token copies only its own keys and values: the buffers allocated when the segment started are
    the ones the later tokens are written into."""
    model = tiny_model(xl_max_memories=4)
    first = model.generate(torch.randint(3, 32, (1, 10)), max_new_tokens=2, seq_len=8, temperature=0.0)
    pending = first.state.pending
    assert pending.tokens.length == 4 and pending.keys[0].length == 4 + 4  # XL cache, then the segment
    storage = [buffer.data.data_ptr() for buffer in pending.keys + pending.values]
    more = model.generate(torch.tensor([[5]]), max_new_tokens=2, seq_len=8, temperature=0.0, state=first.state)
    assert more.state.pending is pending and pending.tokens.length == 7
    assert [buffer.data.data_ptr() for buffer in pending.keys + pending.values] == storage
    with pytest.raises(ValueError, match="seq_len"):
        model.generate(torch.tensor([[5]]), max_new_tokens=1, seq_len=16, state=first.state)


def test_long_prompt_fills_memory_before_the_first_token():
    model = tiny_model(max_knn_memories=64, xl_max_memories=8)
    prompt = torch.randint(3, 32, (1, 200))
    out = model.generate(prompt, max_new_tokens=1, seq_len=8, temperature=0.0)
    assert out.state.knn_memories[0].count.tolist() == [64]
    assert out.state.xl_memories[0].keys.shape[2] == 8


def test_sampling_options_and_eos():
    model = tiny_model(pad_id=PAD)
    prompt = torch.randint(3, 32, (3, 4))
    g = torch.Generator().manual_seed(0)
    out = model.generate(prompt, max_new_tokens=6, seq_len=4, temperature=0.8, top_k=5, top_p=0.9, generator=g)
    assert out.tokens.shape == (3, 6) and (out.tokens >= 0).all() and (out.tokens < 32).all()
    greedy_first = model.generate(prompt, max_new_tokens=1, seq_len=4, temperature=0.0).tokens[:, 0]
    top1 = model.generate(prompt, max_new_tokens=1, seq_len=4, temperature=1.0, top_k=1).tokens[:, 0]
    assert torch.equal(greedy_first, top1)
    stopped = model.generate(prompt, max_new_tokens=5, seq_len=4, temperature=0.0, eos_token_id=int(greedy_first[0]))
    assert stopped.tokens[0, 0] == greedy_first[0] and (stopped.tokens[0, 1:] == PAD).all()


@pytest.mark.parametrize("kwargs", [dict(max_new_tokens=-1), dict(temperature=-1.0), dict(top_k=0), dict(top_p=1.5),
                                    dict(seq_len=0)])
def test_bad_generation_arguments(kwargs):
    model = tiny_model()
    args = dict(max_new_tokens=2, seq_len=4)
    args.update(kwargs)
    with pytest.raises(ValueError):
        model.generate(torch.randint(3, 32, (1, 4)), **args)
