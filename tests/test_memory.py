"""KNNMemory against a brute-force reference: FIFO rings, per-row independence, exact top-k."""


import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from memorizing_transformers_pytorch import KNNMemory, KNNMemoryList
from memorizing_transformers_pytorch import search as search_module


class BruteForceMemory:
    """Obviously correct: every pair added to a row since its last clear, in order; a row holds the first
    ``keep_first`` of them and the newest ``max_memories - keep_first``; full sort on search."""

    def __init__(self, max_memories, rows, keep_first=0):
        self.max_memories, self.keep_first = max_memories, keep_first
        self.added = [[] for _ in range(rows)]  # (key, value) added to a row since its last clear, in order

    def held_indices(self, row):
        n, first = len(self.added[row]), self.keep_first
        return sorted(set(range(min(first, n))) | set(range(max(first, n - (self.max_memories - first)), n)))

    @property
    def rows(self):
        return [[self.added[row][i] for i in self.held_indices(row)] for row in range(len(self.added))]

    def add(self, pairs, mask):
        for row in range(len(self.added)):
            for i in range(pairs.shape[1]):
                if mask[row, i]:
                    self.added[row].append((pairs[row, i, 0], pairs[row, i, 1]))

    def clear(self, rows):
        for row in rows:
            self.added[row].clear()

    def ages(self, row, key):
        """Pairs added to the row after each held copy of ``key``."""
        n = len(self.added[row])
        return {n - 1 - i for i in self.held_indices(row) if torch.equal(self.added[row][i][0], key)}

    def top_scores(self, row, query, k):
        scores = sorted((float(query @ key) for key, _ in self.rows[row]), reverse=True)
        return scores[:k]


def check_against(memory, reference, queries, topk):
    key_values, mask, ages = memory.search(queries, topk, with_ages=True)
    torch.testing.assert_close(memory.search(queries, topk)[0], key_values)
    assert key_values.shape == (*queries.shape[:-1], topk, 2, memory.dim)
    assert mask.shape == (*queries.shape[:-1], topk)
    for row, items in enumerate(reference.rows):
        assert int(memory.count[row]) == len(items)
        stored: dict[tuple, list] = {}  # a key may be stored more than once (small-integer keys), each time
        for key, value in items:       # with its own value
            stored.setdefault(tuple(key.tolist()), []).append(value)
        for qi in range(queries.shape[1]):
            expected = reference.top_scores(row, queries[row, qi], topk)
            found = int(mask[row, qi].sum())
            assert found == len(expected)
            assert mask[row, qi, :found].all()  # valid slots come first
            assert (key_values[row, qi, found:] == 0).all()  # the rest are zero-filled
            got_keys = key_values[row, qi, :found, 0]
            torch.testing.assert_close(got_keys @ queries[row, qi], torch.tensor(expected), rtol=0, atol=1e-5)
            for key, value, age in zip(got_keys, key_values[row, qi, :found, 1], ages[row, qi, :found]):
                assert any(torch.equal(v, value) for v in stored[tuple(key.tolist())])  # each key with its own value
                assert int(age) in reference.ages(row, key)
            assert (ages[row, qi, found:] == 0).all()


operation = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 12), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("clear"), st.lists(st.integers(0, 2), max_size=3), st.just(0)),
    st.tuples(st.just("search"), st.integers(1, 9), st.integers(0, 2**31 - 1)),
)


@settings(max_examples=60, deadline=None)
@given(max_memories=st.integers(1, 10), operations=st.lists(operation, max_size=25),
       index=st.sampled_from(["exact", "flat", "ivf", "fused"]), keep_first=st.integers(0, 4))
def test_random_add_clear_search_matches_brute_force(max_memories, operations, index, keep_first):
    """Exact search (torch, faiss's flat kernels, the two-stage fused search), and the faiss IVF index scanning all
    its lists (which is exact), against brute force; with and without the first pairs of each stream kept."""
    rows, dim = 3, 4
    keep_first = min(keep_first, max_memories - 1)
    options = dict(index="ivf", ivf_lists=2, ivf_probe=2, ivf_train_size=2) if index == "ivf" else dict(index=index)
    memory = KNNMemory(dim=dim, max_memories=max_memories, num_indices=rows, keep_first=keep_first, **options)
    if index == "fused":
        memory.backend.min_queries = 1  # its two stages, not the exact search it leaves a few queries to
    reference = BruteForceMemory(max_memories, rows, keep_first)
    for kind, arg, seed in operations:
        generator = torch.Generator().manual_seed(seed)
        if kind == "add":
            pairs = torch.randn(rows, arg, 2, dim, generator=generator)
            mask = torch.rand(rows, arg, generator=generator) < 0.8
            memory.add(pairs, mask=mask)
            reference.add(pairs, mask)
        elif kind == "clear":
            memory.clear(arg)
            reference.clear(arg)
        else:
            queries = torch.randn(rows, 3, dim, generator=generator)
            check_against(memory, reference, queries, arg)


def test_blocked_search_is_exact(monkeypatch):
    """Small blocks force many query and memory blocks and the running top-k merge."""
    monkeypatch.setattr(search_module, "MEMORY_BLOCK", 7)
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 50)
    memory = KNNMemory(dim=8, max_memories=40, num_indices=2)
    reference = BruteForceMemory(40, 2)
    for _ in range(3):
        pairs = torch.randn(2, 17, 2, 8)
        memory.add(pairs)
        reference.add(pairs, torch.ones(2, 17, dtype=torch.bool))
        check_against(memory, reference, torch.randn(2, 11, 8), 5)


def check_exact_search_with_uneven_rows(queries):
    """Three adds of 17 pairs to an exact-search memory of 40 (row 1 keeps about 60% of its pairs), each followed
    by a search of ``queries`` queries per row, top-5, against brute force."""
    memory = KNNMemory(dim=8, max_memories=40, num_indices=2, index="exact")
    reference = BruteForceMemory(40, 2)
    for _ in range(3):
        pairs, mask = torch.randn(2, 17, 2, 8), torch.rand(2, 17) < torch.tensor([[1.0], [0.6]])
        memory.add(pairs, mask)
        reference.add(pairs, mask)
        check_against(memory, reference, torch.randn(2, queries, 8), 5)


@pytest.mark.parametrize("queries", [1, 3])
def test_few_queries_search_is_exact_with_keys_streamed(monkeypatch, queries):
    """The few-query formulation (keys @ queries^T, as for large memories in generation), in several memory blocks,
    with rows holding different counts, against brute force."""
    monkeypatch.setattr(search_module, "STREAMED_KEY_BYTES", 0)
    monkeypatch.setattr(search_module, "MEMORY_BLOCK", 7)
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 64)  # all queries in one block, 10-32 keys
    check_exact_search_with_uneven_rows(queries)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), lead=st.lists(st.integers(1, 3), max_size=2), m=st.integers(1, 90),
       k=st.integers(1, 12), chunk=st.integers(1, 9), ties=st.booleans(), limited=st.booleans())
def test_chunked_topk_returns_what_topk_returns(data, lead, m, k, chunk, ties, limited):
    """The two-stage top-k (chunk maxima, then the best chunks' scores) against one topk: the same values, each
    index pointing at its value, no index twice; with many equal scores, with -inf, and with the indices from a
    per-row limit on (empty slots) counting as -inf without being masked first."""
    k = min(k, m)
    seed = data.draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (*lead, m), generator=generator).float() if ties else \
        torch.randn(*lead, m, generator=generator)
    scores[torch.rand(*lead, m, generator=generator) < data.draw(st.sampled_from([0.0, 0.3, 1.0]))] = float("-inf")
    limit = torch.randint(0, m + 2, (*lead, 1), generator=generator) if limited else None
    masked = scores if limit is None else scores.masked_fill(torch.arange(m) >= limit, float("-inf"))
    values, index = search_module.chunked_topk(scores.clone(), k, chunk, limit)
    assert values.shape == index.shape == (*lead, k)
    assert torch.equal(values, masked.topk(k, dim=-1).values)
    assert torch.equal(masked.gather(-1, index), values)
    assert (index.sort(dim=-1).values.diff(dim=-1) > 0).all()  # distinct slots


@pytest.mark.parametrize("queries", [1, 5])
def test_search_with_chunked_topk_is_exact(monkeypatch, queries):
    """Every block's top-k by chunks (2 slots each, as soon as a block has k chunks), in several memory blocks, with
    rows holding different counts, against brute force."""
    monkeypatch.setattr(search_module, "TOPK_CHUNK", 2)
    monkeypatch.setattr(search_module, "CHUNKED_TOPK_MIN_CHUNKS", 1)
    monkeypatch.setattr(search_module, "CHUNKED_TOPK_ON_CPU", True)  # the accelerators' path, on CPU
    monkeypatch.setattr(search_module, "MEMORY_BLOCK", 13)
    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 64)
    check_exact_search_with_uneven_rows(queries)


@settings(max_examples=25, deadline=None)
@given(operations=st.lists(st.tuples(st.sampled_from(["add", "add", "clear", "search"]), st.integers(0, 2**31 - 1)),
                           min_size=1, max_size=12), unit=st.booleans())
def test_fused_search_with_many_chunks_matches_brute_force(operations, unit):
    """The fused search where it leaves chunks out (400 slots, chunks of 16, k of 25 chunks kept): its tf32x3
    first stage, the bound that proves a query exact, and the fallback, against brute force."""
    rows, dim, size = 2, 16, 400
    memory = KNNMemory(dim=dim, max_memories=size, num_indices=rows, index="fused")
    memory.backend.min_queries = 1  # a few queries per call, through the two stages all the same
    reference = BruteForceMemory(size, rows)
    for kind, seed in operations:
        generator = torch.Generator().manual_seed(seed)
        if kind == "add":
            pairs = torch.randn(rows, int(torch.randint(1, 300, (1,), generator=generator)), 2, dim, generator=generator)
            if unit:
                pairs[..., 0, :] = torch.nn.functional.normalize(pairs[..., 0, :], dim=-1)
            mask = torch.rand(rows, pairs.shape[1], generator=generator) < 0.9
            memory.add(pairs, mask=mask)
            reference.add(pairs, mask)
        elif kind == "clear":
            memory.clear([seed % rows])
            reference.clear([seed % rows])
        else:
            check_against(memory, reference, torch.randn(rows, 6, dim, generator=generator),
                          int(torch.randint(1, 9, (1,), generator=generator)))


@pytest.mark.parametrize("slack", [0.0, 2.0])
def test_fused_search_on_random_and_on_equal_keys(slack):
    """Random unit keys are answered exactly without a fallback (with no slack, by keeping 2k chunks: the k-th
    kept maximum must fall below the k-th score by the bound). A copy of one key in every chunk (more chunks than
    kept hold the best score): with no slack the proof fails and the call is searched again; with the default
    slack the copies are accepted as they are. Both return 32 copies."""
    memory = KNNMemory(dim=64, max_memories=4096, num_indices=2, index="fused")
    memory.backend.slack = slack
    memory.backend.chunks_per_k = 2 if slack == 0 else 1  # no slack: the kept chunks must leave a gap
    keys = torch.nn.functional.normalize(torch.randn(2, 4096, 64), dim=-1)
    memory.add(torch.stack((keys, torch.randn(2, 4096, 64)), dim=2))
    queries = torch.randn(2, 32, 64)
    kv, _ = memory.search(queries, 32)
    torch.testing.assert_close((kv[..., 0, :] * queries[:, :, None]).sum(-1),
                               _brute_force_top_scores(memory, queries, 32), rtol=0, atol=1e-5)
    assert (memory.backend.searches, memory.backend.fallbacks) == (1, 0)
    copies = KNNMemory(dim=64, max_memories=4096, num_indices=2, index="fused")
    copies.backend.slack, copies.backend.min_queries = slack, 1
    keys[:, ::16] = keys[:, :1]
    copies.add(torch.stack((keys, torch.randn(2, 4096, 64)), dim=2))
    kv, _ = copies.search(keys[:, :1].expand(2, 4, 64), 32)
    assert copies.backend.fallbacks == (1 if slack == 0 else 0)
    torch.testing.assert_close(kv[..., 0, :], keys[:, :1, None].expand(2, 4, 32, 64))


@pytest.mark.parametrize("slack", [0.0, 2.0])
def test_fused_search_with_a_first_stage_as_wrong_as_its_bound_allows(monkeypatch, slack):
    """A first stage that errs adversarially by 0.99 m (m: the bound): each chunk holding a true top-k slot scored
    that much low, every other chunk that much high. Three chunks' best keys score t (A), t - 0.2m (B) and
    t - 1.5m (C): B and C are kept, A left out. With no slack the proof fails (A might beat B) and the call falls
    back and finds A; with slack 2 it returns B, within its promise of 2m of the exact answer."""
    from memorizing_transformers_pytorch.search_kernels import score_error_bound

    k, dim = 1, 16
    margin = score_error_bound(dim)  # unit query, keys of norm <= 1

    def adversarial_maxima(queries, keys, count, held, chunk):
        exact = queries.double() @ keys[:, :, :held].double().transpose(-1, -2)
        B, H, Q, _ = exact.shape
        top = torch.zeros_like(exact, dtype=torch.bool).scatter_(-1, exact.topk(k, dim=-1).indices, True)
        chunks = -(-held // chunk)
        pad = (0, chunks * chunk - held)
        maxima = torch.nn.functional.pad(exact, pad, value=float("-inf")).view(B, H, Q, chunks, chunk).amax(-1)
        holds_top = torch.nn.functional.pad(top, pad).view(B, H, Q, chunks, chunk).any(-1)
        return torch.where(holds_top, maxima - 0.99 * margin, maxima + 0.99 * margin).float()

    monkeypatch.setattr(search_module, "chunk_maxima", adversarial_maxima)
    keys = torch.zeros(1, 64, dim)
    keys[0, :, 0] = 0.5
    keys[0, 0, 0], keys[0, 16, 0], keys[0, 32, 0] = 1.0, 1.0 - 0.2 * margin, 1.0 - 1.5 * margin  # A, B, C
    memory = KNNMemory(dim=dim, max_memories=64, num_indices=1, index="fused")
    memory.backend.slack, memory.backend.chunks_per_k, memory.backend.min_queries = slack, 2, 1
    memory.add(torch.stack((keys, torch.randn(1, 64, dim)), dim=2))
    query = torch.zeros(1, 1, dim)
    query[..., 0] = 1.0
    kv, _ = memory.search(query, k)
    if slack == 0:
        assert torch.equal(kv[0, 0, 0, 0], keys[0, 0])
        assert (memory.backend.searches, memory.backend.fallbacks) == (1, 1)
    else:
        assert torch.equal(kv[0, 0, 0, 0], keys[0, 16])
        assert memory.backend.fallbacks == 0


def test_fused_search_in_blocks_of_queries_searches_again_only_the_blocks_that_fail(monkeypatch):
    """Blocks of 2 queries (and the torch first stage in blocks of 1): with no slack, the queries for a key copied
    into every chunk fail their check and only their blocks are searched again; everything matches brute force."""
    from memorizing_transformers_pytorch import search_kernels

    monkeypatch.setattr(search_module, "SCORE_BLOCK_ELEMENTS", 2 * 2 * 256)  # 2 streams x 256 chunks x 2 queries
    monkeypatch.setattr(search_kernels, "TORCH_BLOCK_ELEMENTS", 1)
    calls = []
    exact = search_module.exact_top_slots
    monkeypatch.setattr(search_module, "exact_top_slots", lambda *a: calls.append(a[3].shape[2]) or exact(*a))
    keys = torch.nn.functional.normalize(torch.randn(2, 4096, 64), dim=-1)
    keys[:, ::16] = keys[:, :1]
    memory = KNNMemory(dim=64, max_memories=4096, num_indices=2, index="fused")
    memory.backend.slack, memory.backend.chunks_per_k, memory.backend.min_queries = 0.0, 2, 1
    reference = BruteForceMemory(4096, 2)
    pairs = torch.stack((keys, torch.randn(2, 4096, 64)), dim=2)
    memory.add(pairs)
    reference.add(pairs, torch.ones(2, 4096, dtype=torch.bool))
    queries = torch.nn.functional.normalize(torch.randn(2, 6, 64), dim=-1)
    queries[:, 4:] = keys[:, :1]  # the last block asks for the copied key
    check_against(memory, reference, queries, 8)
    assert calls == [2, 2] and memory.backend.fallbacks == 2  # the last block, in each of check_against's searches


def test_fused_search_leaves_a_few_queries_to_the_exact_search(monkeypatch):
    calls = []
    exact = search_module.exact_top_slots
    monkeypatch.setattr(search_module, "exact_top_slots", lambda *a: calls.append(a[3].shape[2]) or exact(*a))
    memory = KNNMemory(dim=16, max_memories=400, num_indices=2, index="fused")
    memory.add(torch.randn(2, 400, 2, 16))
    memory.search(torch.randn(2, 4, 16), 4)  # a generated token of 4 query heads sharing a key head
    memory.search(torch.randn(2, 16, 16), 4)
    assert calls == [4] and memory.backend.searches == 1


@pytest.mark.parametrize("settings", [dict(chunk=12), dict(chunk=128), dict(chunks_per_k=0), dict(slack=-1.0),
                                      dict(min_queries=-1)])
def test_fused_search_refuses_bad_settings(settings):
    with pytest.raises(ValueError):
        search_module.FusedSearch(**settings)


def test_the_first_stages_error_stays_within_its_bound():
    """tf32x3 as the tensor cores compute it (heads and tails cut, three products), against the exact score of
    the float32 query and the stored key (float32 or bfloat16): random vectors of many scales, and positive ones
    whose every entry loses almost the most it can; a single tf32 product would break the bound."""
    from memorizing_transformers_pytorch.search_kernels import score_error_bound, tf32_split, tf32x3_scores

    generator = torch.Generator().manual_seed(0)
    for dim in (16, 64, 256):
        q = torch.randn(512, dim, generator=generator) * torch.rand(512, 1, generator=generator) * 100
        k = torch.randn(1024, dim, generator=generator)
        worst = torch.full((4, dim), 1 + 0x1FFF * 2.0**-23)  # all 13 bits below tf32's set
        for queries, keys in ((q, k), (q, k.bfloat16()), (q, k * 1e-3), (worst, worst)):
            exact = queries.double() @ keys.double().T
            bound = score_error_bound(dim) * queries.double().norm(dim=-1)[:, None] * keys.double().norm(dim=-1)
            assert ((tf32x3_scores(queries, keys).double() - exact).abs() <= bound).all()
            one_product = (tf32_split(queries)[0] @ tf32_split(keys)[0].T).double()
            assert keys.dtype == torch.bfloat16 or ((one_product - exact).abs() > bound).any()


def test_fifo_overwrites_oldest_one_by_one():
    memory = KNNMemory(dim=1, max_memories=4, num_indices=1)
    for i in range(6):
        memory.add(torch.full((1, 1, 2, 1), float(i + 1)))
    kv, mask = memory.search(torch.ones(1, 1, 1), topk=4)
    assert sorted(kv[0, 0, :, 0, 0].tolist()) == [3.0, 4.0, 5.0, 6.0]


def test_keep_first_holds_a_streams_first_pairs_and_turns_the_ring_over_the_rest():
    memory = KNNMemory(dim=1, max_memories=5, num_indices=1, keep_first=2)
    for start in range(0, 12, 3):  # pairs 0..11, three at a time
        values = torch.arange(start, start + 3, dtype=torch.float32).view(1, 3, 1, 1)
        memory.add(torch.cat((torch.ones_like(values), values), dim=2))
    held = sorted(memory.values[0, 0, :, 0].tolist())
    assert held == [0, 1, 9, 10, 11]  # the first two, and the newest three
    memory.clear([0])
    memory.add(torch.cat((torch.ones(1, 7, 1, 1), torch.arange(20, 27.0).view(1, 7, 1, 1)), dim=2))  # longer than M
    assert sorted(memory.values[0, 0, :, 0].tolist()) == [20, 21, 24, 25, 26]
    with pytest.raises(ValueError, match="keep_first"):
        KNNMemory(dim=1, max_memories=5, num_indices=1, keep_first=5)


def test_chunk_longer_than_memory_keeps_newest():
    memory = KNNMemory(dim=1, max_memories=3, num_indices=1)
    memory.add(torch.arange(1.0, 8.0).view(1, 7, 1, 1).expand(1, 7, 2, 1))
    kv, mask = memory.search(torch.ones(1, 1, 1), topk=3)
    assert kv[0, 0, :, 0, 0].tolist() == [7.0, 6.0, 5.0]


def test_rows_are_independent():
    memory = KNNMemory(dim=2, max_memories=8, num_indices=2)
    memory.add(torch.randn(2, 5, 2, 2))
    before = memory.search(torch.randn(2, 3, 2), topk=2)
    memory.clear([1])
    kv, mask = memory.search(torch.randn(2, 3, 2), topk=2)
    assert mask[0].all() and not mask[1].any()
    assert memory.count.tolist() == [5, 0]
    assert before[1].all()


def test_multi_head_memory_searches_each_head_separately():
    memory = KNNMemory(dim=2, max_memories=4, num_indices=1, heads=2)
    pairs = torch.zeros(1, 2, 1, 2, 2)
    pairs[0, 0, 0, :, 0] = 1.0  # head 0 holds e0
    pairs[0, 1, 0, :, 1] = 1.0  # head 1 holds e1
    memory.add(pairs)
    kv, mask = memory.search(torch.ones(1, 2, 1, 2), topk=1)
    assert kv.shape == (1, 2, 1, 1, 2, 2)
    assert kv[0, 0, 0, 0, 0].tolist() == [1.0, 0.0]
    assert kv[0, 1, 0, 0, 0].tolist() == [0.0, 1.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_storage_and_search(dtype):
    memory = KNNMemory(dim=16, max_memories=64, num_indices=2)
    pairs = torch.randn(2, 40, 2, 16).to(dtype)
    memory.add(pairs)
    kv, mask = memory.search(torch.randn(2, 5, 16, dtype=dtype), topk=8)
    assert kv.dtype == dtype and mask.all()
    memory.add(torch.randn(2, 3, 2, 16))  # float32 data is stored in the memory's dtype
    assert memory.keys.dtype == dtype


def test_clear_memory_on_list_clears_every_layer():
    memories = KNNMemoryList(KNNMemory(dim=2, max_memories=4, num_indices=2) for _ in range(2))
    for memory in memories:
        memory.add(torch.randn(2, 3, 2, 2))
    memories.clear_memory([0])
    assert [m.count.tolist() for m in memories] == [[0, 3], [0, 3]]


def test_state_dict_round_trip():
    memory = KNNMemory(dim=3, max_memories=5, num_indices=2)
    memory.add(torch.randn(2, 7, 2, 3))
    copy = KNNMemory(dim=3, max_memories=5, num_indices=2)
    copy.load_state_dict(memory.state_dict())
    queries = torch.randn(2, 4, 3)
    for a, b in zip(memory.search(queries, 3, with_ages=True), copy.search(queries, 3, with_ages=True)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dropped", ["positions", "total", "count"])
def test_an_incomplete_state_is_refused_and_leaves_the_memory_unchanged(dropped):
    """Only the released layout loads (the pre-positions one never shipped): a missing entry is a clear error."""
    memory = KNNMemory(dim=3, max_memories=5, num_indices=2)
    memory.add(torch.randn(2, 4, 2, 3))
    before = {name: t.clone() for name, t in memory.state_dict().items()}
    source = KNNMemory(dim=3, max_memories=5, num_indices=2)
    source.add(torch.randn(2, 7, 2, 3))
    state = {k: v for k, v in source.state_dict().items() if k != dropped}
    with pytest.raises(ValueError, match="lacks"):
        memory.load_state_dict(state)
    for name, t in memory.state_dict().items():
        assert torch.equal(t, before[name])


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda m: m.add(torch.randn(3, 4, 2, 8)), ValueError),  # wrong batch
        (lambda m: m.add(torch.randn(2, 4, 3, 8)), ValueError),  # not key | value
        (lambda m: m.add(torch.randn(2, 4, 2, 7)), ValueError),  # wrong dim
        (lambda m: m.add(torch.randn(2, 4, 8)), ValueError),  # wrong rank
        (lambda m: m.add(torch.ones(2, 4, 2, 8, dtype=torch.long)), TypeError),
        (lambda m: m.add(torch.full((2, 4, 2, 8), float("nan"))), ValueError),
        (lambda m: m.add(torch.randn(2, 4, 2, 8), mask=torch.ones(2, 3, dtype=torch.bool)), ValueError),
        (lambda m: m.search(torch.randn(2, 4, 7), topk=2), ValueError),
        (lambda m: m.search(torch.randn(3, 4, 8), topk=2), ValueError),
        (lambda m: m.search(torch.randn(2, 4, 8), topk=0), ValueError),
        (lambda m: m.search(torch.full((2, 4, 8), float("nan")), topk=2), ValueError),
        (lambda m: m.clear([5]), ValueError),
        (lambda m: m.clear([0.5]), TypeError),
    ],
)
def test_bad_input_raises_and_leaves_memory_unchanged(call, error):
    memory = KNNMemory(dim=8, max_memories=6, num_indices=2)
    memory.add(torch.randn(2, 4, 2, 8))
    before = {name: t.clone() for name, t in memory.state_dict().items()}
    with pytest.raises(error):
        call(memory)
    for name, t in memory.state_dict().items():
        assert torch.equal(t, before[name])


@pytest.mark.parametrize("args", [dict(dim=0, max_memories=4, num_indices=1), dict(dim=4, max_memories=-1, num_indices=1),
                                  dict(dim=4, max_memories=4, num_indices=2.0)])
def test_bad_constructor_arguments(args):
    with pytest.raises((TypeError, ValueError)):
        KNNMemory(**args)


def test_nothing_is_written_to_disk(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    memory = KNNMemory(dim=4, max_memories=8, num_indices=1)
    memory.add(torch.randn(1, 3, 2, 4))
    memory.search(torch.randn(1, 2, 4), topk=2)
    assert list(tmp_path.iterdir()) == []


def _brute_force_top_scores(memory, queries, k):
    keys = memory.keys[:, 0, : int(memory.count.max())].float()
    return (queries.float() @ keys.transpose(1, 2)).topk(k, dim=-1).values


@pytest.mark.parametrize("size, k", [(8192, 4), (3000, 32)])
def test_large_memory_search_is_exact(size, k):
    """Thousands of keys, k up to 32: the default search returns the brute-force top-k scores."""
    memory = KNNMemory(dim=32, max_memories=size, num_indices=2)
    memory.add(torch.randn(2, size, 2, 32))
    queries = torch.randn(2, 64, 32)
    kv, mask = memory.search(queries, k)
    got = (kv[..., 0, :] * queries[:, :, None]).sum(-1)
    torch.testing.assert_close(got, _brute_force_top_scores(memory, queries, k), rtol=0, atol=1e-5)


def test_near_ties_that_bfloat16_cannot_separate_are_still_exact():
    """Keys closer together than bfloat16 can tell apart: the default (float32) search still ranks them exactly."""
    base = torch.randn(1, 1, 32)
    keys = base + 1e-4 * torch.randn(2, 4096, 32)
    memory = KNNMemory(dim=32, max_memories=4096, num_indices=2)
    memory.add(torch.stack((keys, torch.randn(2, 4096, 32)), dim=2))
    queries = base.expand(2, 8, 32) + 1e-3 * torch.randn(2, 8, 32)
    kv, _ = memory.search(queries, 16)
    got = (kv[..., 0, :] * queries[:, :, None]).sum(-1)
    torch.testing.assert_close(got, _brute_force_top_scores(memory, queries, 16), rtol=1e-6, atol=1e-4)


def test_flat_index_returns_what_exact_search_returns():
    """faiss's exact kernels against the torch search, with several heads and rows holding different counts."""
    flat = KNNMemory(dim=16, max_memories=300, num_indices=3, heads=2, index="flat")
    exact = KNNMemory(dim=16, max_memories=300, num_indices=3, heads=2)
    for step in range(4):
        pairs = torch.randn(3, 2, 120, 2, 16)
        mask = torch.rand(3, 120) < torch.tensor([[1.0], [0.5], [0.1]])
        for memory in (flat, exact):
            memory.add(pairs, mask=mask)
        if step == 1:
            for memory in (flat, exact):
                memory.clear([2])
        queries = torch.randn(3, 2, 40, 16)
        (got, got_mask, got_ages), (want, want_mask, want_ages) = (
            m.search(queries, 24, with_ages=True) for m in (flat, exact))
        assert torch.equal(got_mask, want_mask)
        torch.testing.assert_close(got, want)
        assert torch.equal(got_ages, want_ages)


def test_flat_search_leaves_faiss_settings_as_it_found_them():
    faiss = pytest.importorskip("faiss")
    original = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads() + 1)  # differs from what the search sets
    try:
        threads, block = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_query_bs
        memory = KNNMemory(dim=8, max_memories=64, num_indices=1, index="flat")
        memory.add(torch.randn(1, 64, 2, 8))
        memory.search(torch.randn(1, 5, 8), 3)
        assert (faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_query_bs) == (threads, block)
    finally:
        faiss.omp_set_num_threads(original)


def test_ivf_index_forgets_evicted_pairs_and_finds_their_replacements():
    memory = KNNMemory(dim=8, max_memories=64, num_indices=2, index="ivf", ivf_lists=4, ivf_probe=4, ivf_train_size=32)
    first = torch.nn.functional.normalize(torch.randn(2, 64, 2, 8), dim=-1)
    memory.add(first)
    assert memory.backend.name == "ivf" and memory.backend.ready
    second = torch.nn.functional.normalize(torch.randn(2, 16, 2, 8), dim=-1)
    memory.add(second)  # overwrites the 16 oldest
    key_values, mask = memory.search(first[:, :16, 0], 1)  # evicted keys: their own pairs must not come back
    for row in range(2):
        for i in range(16):
            assert not torch.equal(key_values[row, i, 0, 0], first[row, i, 0])
    key_values, _ = memory.search(second[:, :, 0], 1)
    torch.testing.assert_close(key_values[:, :, 0, 0], second[:, :, 0])
    kept, _ = memory.search(first[:, 16:, 0], 1)
    torch.testing.assert_close(kept[:, :, 0, 0], first[:, 16:, 0])


def test_ivf_index_is_rebuilt_from_a_state_dict():
    memory = KNNMemory(dim=8, max_memories=64, num_indices=1, index="ivf", ivf_lists=4, ivf_probe=4, ivf_train_size=32)
    memory.add(torch.randn(1, 50, 2, 8))
    copy = KNNMemory(dim=8, max_memories=64, num_indices=1, index="ivf", ivf_lists=4, ivf_probe=4, ivf_train_size=32)
    copy.load_state_dict(memory.state_dict())
    queries = torch.randn(1, 5, 8)
    torch.testing.assert_close(copy.search(queries, 3)[0], memory.search(queries, 3)[0])


def test_model_runs_with_the_ivf_index():
    from conftest import tiny_model

    model = tiny_model(knn_index="ivf", knn_ivf_lists=2, knn_ivf_probe=1, max_knn_memories=64)
    knn = model.create_knn_memories(batch_size=2)
    assert knn[0].index == "ivf"
    for _ in range(6):
        logits, _ = model(torch.randint(0, 32, (2, 16)), knn_memories=knn)
    assert knn[0].backend.ready and torch.isfinite(logits).all()


def test_model_gives_the_same_logits_with_the_flat_index():
    from conftest import tiny_model

    exact = tiny_model(max_knn_memories=64)
    flat = tiny_model(knn_index="flat", max_knn_memories=64)
    flat.load_state_dict(exact.state_dict())
    memories = [model.create_knn_memories(batch_size=2) for model in (exact, flat)]
    for _ in range(6):
        x = torch.randint(0, 32, (2, 16))
        want, _ = exact(x, knn_memories=memories[0])
        got, _ = flat(x, knn_memories=memories[1])
        torch.testing.assert_close(got, want)


def test_model_gives_the_same_logits_and_gradients_with_the_fused_index():
    """A model whose memory holds many chunks (512 slots, chunks of 16, k = 4 of them kept), over segments, in
    training: the fused search's logits and gradients equal the exact search's."""
    from conftest import tiny_model

    exact = tiny_model(max_knn_memories=512, xl_max_memories=0)
    fused = tiny_model(knn_index="fused", max_knn_memories=512, xl_max_memories=0)
    fused.load_state_dict(exact.state_dict())
    memories = [model.create_knn_memories(batch_size=2) for model in (exact, fused)]
    for _ in range(12):
        x = torch.randint(0, 32, (2, 64))
        want, _ = exact(x, knn_memories=memories[0], labels=x)
        got, _ = fused(x, knn_memories=memories[1], labels=x)
        torch.testing.assert_close(got, want)
    want.backward()
    got.backward()
    for (name, a), b in zip(exact.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    backend = memories[1][0].backend
    assert backend.searches == 11 and backend.fallbacks < backend.searches  # the first segment finds none


def test_ivf_search_is_exact_for_a_stream_cleared_until_it_refills():
    """After a document boundary a stream holds few pairs; IVF would miss most of them, so it is searched exactly."""
    options = dict(index="ivf", ivf_lists=8, ivf_probe=1, ivf_train_size=64)
    memory = KNNMemory(dim=8, max_memories=256, num_indices=2, **options)
    exact = KNNMemory(dim=8, max_memories=256, num_indices=2)
    pairs = torch.nn.functional.normalize(torch.randn(2, 256, 2, 8), dim=-1)
    for m in (memory, exact):
        m.add(pairs)
        m.clear([1])
        m.add(pairs[:, :20])
    assert memory.backend.usable(memory.count) == [0]
    queries = torch.randn(2, 16, 8)
    got, got_mask = memory.search(queries, 8)
    want, want_mask = exact.search(queries, 8)
    torch.testing.assert_close(got[1], want[1])
    assert torch.equal(got_mask[1], want_mask[1])


def test_auto_search_routes_segments_to_faiss_and_single_tokens_to_torch(monkeypatch):
    """The default index: faiss's exact kernels for many queries on CPU, torch for a few; the same results."""
    from memorizing_transformers_pytorch.search import AutoSearch, FaissFlatSearch

    used = []
    real_flat = FaissFlatSearch.search
    monkeypatch.setattr(FaissFlatSearch, "search", lambda self, *a: used.append("flat") or real_flat(self, *a))
    auto = KNNMemory(dim=16, max_memories=500, num_indices=2)
    exact = KNNMemory(dim=16, max_memories=500, num_indices=2, index="exact")
    assert isinstance(auto.backend, AutoSearch)
    pairs = torch.randn(2, 400, 2, 16)
    for memory in (auto, exact):
        memory.add(pairs)
    for queries, expected in ((4, []), (auto.backend.min_faiss_queries, ["flat"])):
        used.clear()
        q = torch.randn(2, queries, 16)
        torch.testing.assert_close(auto.search(q, 8)[0], exact.search(q, 8)[0])
        assert used == expected


# ------------------------------------------------------------------------------------------------- bf16 search
@settings(max_examples=40, deadline=None)
@given(max_memories=st.integers(1, 10), operations=st.lists(operation, max_size=25))
@example(max_memories=8, operations=[("add", 10, 263), ("search", 1, 3)])  # a key stored twice, kept both times
def test_bf16_search_follows_every_write_clear_and_reload(max_memories, operations):
    """Keys and queries of small integers have exact bfloat16 scores, so the bf16 search with only k candidates
    must find the exact top k: this checks that its bfloat16 copy of the keys follows every add (FIFO overwrites,
    masks), clear and ``load_state_dict``."""
    rows, dim = 3, 4

    def bf16_memory():
        memory = KNNMemory(dim=dim, max_memories=max_memories, num_indices=rows, index="bf16")
        memory.backend = search_module.BFloat16Search(candidates_per_k=1)
        return memory

    memory, reference = bf16_memory(), BruteForceMemory(max_memories, rows)
    for kind, arg, seed in operations:
        generator = torch.Generator().manual_seed(seed)
        if kind == "add":
            pairs = torch.randint(-3, 4, (rows, arg, 2, dim), generator=generator).float()
            mask = torch.rand(rows, arg, generator=generator) < 0.8
            memory.add(pairs, mask=mask)
            reference.add(pairs, mask)
        elif kind == "clear":
            memory.clear(arg)
            reference.clear(arg)
        else:
            queries = torch.randint(-3, 4, (rows, 3, dim), generator=generator).float()
            check_against(memory, reference, queries, arg)
            reloaded = bf16_memory()
            reloaded.load_state_dict(memory.state_dict())
            check_against(reloaded, reference, queries, arg)


def _recall(found: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of the true top-k slots ``(..., k)`` that were found."""
    return (found.unsqueeze(-1) == truth.unsqueeze(-2)).any(-1).float().mean().item()


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(200, 8192), dim=st.sampled_from([16, 32, 64]),
       k=st.sampled_from([1, 4, 32]), unit=st.booleans())
def test_bf16_search_recall_on_random_keys_and_exact_scores(seed, size, dim, k, unit):
    """On random keys the bf16 search finds >= 99% of the float32 top k; what it returns carries the exact
    float32 scores of the returned slots, best first."""
    generator = torch.Generator().manual_seed(seed)
    B, H, Q = 2, 2, 32
    keys = torch.randn(B, H, size, dim, generator=generator)
    queries = torch.randn(B, H, Q, dim, generator=generator)
    if unit:
        keys, queries = torch.nn.functional.normalize(keys, dim=-1), torch.nn.functional.normalize(queries, dim=-1)
    count = torch.tensor([size, size - 100])  # the second row holds fewer than its capacity
    k = min(k, size - 100)
    candidates = search_module.BFloat16Search().candidates_per_k * k
    scores, slots = search_module.reranked_top_slots(keys, keys.bfloat16(), count, size, queries, k, candidates)
    truth = search_module.exact_top_slots(keys, count, size, queries, k)
    assert _recall(slots, truth) >= 0.99
    assert (slots >= 0).all() and (slots[1] < size - 100).all()
    exact = (queries.unsqueeze(-2) * keys.gather(2, slots.reshape(B, H, -1, 1).expand(-1, -1, -1, dim))
             .view(B, H, Q, k, dim)).sum(-1)
    torch.testing.assert_close(scores, exact, rtol=0, atol=1e-5)
    assert (scores[..., :-1] >= scores[..., 1:]).all()


def test_bf16_index_returns_empty_slots_past_what_a_stream_holds():
    memory = KNNMemory(dim=8, max_memories=16, num_indices=2, index="bf16")
    memory.add(torch.randn(2, 5, 2, 8), mask=torch.tensor([[True] * 5, [True, True, False, False, False]]))
    kv, mask = memory.search(torch.randn(2, 3, 8), 4)
    assert mask[0].all() and mask[1, :, :2].all() and not mask[1, :, 2:].any()
    assert (kv[1, :, 2:] == 0).all()


def test_model_gives_the_same_logits_with_the_bf16_index_when_its_candidates_cover_the_memory():
    """With 8k candidates >= the memory's size, the bf16 search re-ranks every pair in float32: exact."""
    from conftest import tiny_model

    exact = tiny_model(max_knn_memories=16, num_retrieved_memories=4)
    bf16 = tiny_model(knn_index="bf16", max_knn_memories=16, num_retrieved_memories=4)
    bf16.load_state_dict(exact.state_dict())
    memories = [model.create_knn_memories(batch_size=2) for model in (exact, bf16)]
    assert memories[1][0].index == "bf16"
    for _ in range(4):
        x = torch.randint(0, 32, (2, 16))
        want, _ = exact(x, knn_memories=memories[0])
        got, _ = bf16(x, knn_memories=memories[1])
        torch.testing.assert_close(got, want)
