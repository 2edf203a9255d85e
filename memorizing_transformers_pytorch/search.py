"""Search backends of ``KNNMemory``: which stored slots hold the keys nearest to each query.

The ring buffer (``memory.py``) owns the keys and values; a backend only finds slots. Every backend has
the same small interface (``SearchBackend``): ``search`` returns slot indices, and three hooks tell it when
pairs were written, streams cleared, or a saved state loaded, for backends that keep an index of their own.

Shapes:
    B streams, H key/value heads, M capacity per stream and head, Q queries per stream and head,
    D feature dimension, k neighbours.

Backends:
    ``auto``:  the faster exact search for each call (the default): ``flat`` on CPU for segments (many
               queries), ``exact`` for a few queries (generation, where faiss's per-call overhead dominates) and
               off the CPU.
    ``exact``: blocked torch matmul + running top-k on the memory's device.
    ``flat``:  the same exact search by faiss's blocked BLAS + heap kernels on CPU, 1.2-3.8x faster there
               (docs/benchmarks.md); on other devices it runs ``exact``.
    ``ivf``:   approximate faiss ``IndexIVFFlat`` per stream and head, on CPU, FIFO-exact in what it holds.
    ``bf16``:  for accelerators: candidates scored in bfloat16 (from a bfloat16 copy of the keys), re-ranked
               exactly in float32; what it returns is ordered by exact scores, and it misses a neighbour only when
               bfloat16 rounding drops it from the candidates (recall in docs/benchmarks.md).
    ``fused``: for GPUs with Triton, in two stages (``search_kernels.py``): each chunk of slots' largest score on
               tensor cores (tf32x3), then exact scores of the best chunks' slots; a per-query check of a proven
               error bound guarantees each returned score within ~1e-4 relative of the exact one at its rank (else
               the call is searched by ``exact``); measured on real keys: float32 rounding. Torch code elsewhere.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from .search_kernels import chunk_maxima, chunk_scores, score_error_bound

__all__ = ["SearchBackend", "ExactSearch", "FaissFlatSearch", "AutoSearch", "FaissIVFSearch", "BFloat16Search",
           "FusedSearch", "INDEXES", "make_backend", "exact_top_slots", "reranked_top_slots", "chunked_topk"]

INDEXES = ("auto", "exact", "flat", "ivf", "bf16", "fused")

# Score blocks hold at most this many elements (float32: 32 MiB), which bounds the extra memory a search needs
# whatever the memory size; sized for CPU caches. Memory blocks have MEMORY_BLOCK keys, or more when few
# queries leave room. On an accelerator blocks are 16x larger (512 MiB of float32 scores): one matmul and one
# top-k over a whole 64K memory for 2 x 1,024 queries, instead of 8 small kernels and 7 top-k merges.
SCORE_BLOCK_ELEMENTS = 1 << 23
ACCELERATOR_SCORE_BLOCK_ELEMENTS = 1 << 27
MEMORY_BLOCK = 16384
# A few queries (generation) against more keys than the CPU's caches hold: scores as keys @ queries^T, a product
# over the keys as stored. queries @ keys^T was measured 1.5-1.8x slower there (B x H x N x D = 1 x 4 x 64K x 64
# and 1 x 8 x 16K-64K x 128, one query per head), but 1.2-1.4x faster for keys that fit the caches (4-8 MiB).
FEW_QUERIES = 4
STREAMED_KEY_BYTES = 32 << 20
# On an accelerator the top-k of a block of scores is taken over chunks of TOPK_CHUNK consecutive slots first
# (``chunked_topk``) once the block has at least CHUNKED_TOPK_MIN_CHUNKS x k chunks: one pass for the chunk maxima
# and two small top-ks instead of one top-k over the block, which dominated the H100 search (docs/benchmarks.md).
# Not on CPU: there the search's time is the matmul's, and chunks measured 0.79-1.07x one topk in the whole search
# (benchmarks/bench_topk.py). On a GPU it is measured by the same script (scripts/gpu_checks.sh).
TOPK_CHUNK = 32
CHUNKED_TOPK_MIN_CHUNKS = 4
CHUNKED_TOPK_ON_CPU = False
# faiss's score blocks: 1,024 x 1,024 instead of its 4,096 x 1,024 default, 17-27% faster here at 16K-65K
FAISS_QUERY_BLOCK = 1024


class SearchBackend(Protocol):
    """What ``KNNMemory`` asks of a search backend."""

    name: str

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        """Slot indices ``(B, H, Q, k)``, best first, of the largest ``query . key``; -1 where none.

        Args:
            keys: ``(B, H, M, D)``; stream ``b`` holds valid keys in slots ``0 .. count[b] - 1``.
            count: ``(B,)`` pairs held per stream.
            held: an upper bound of ``count`` known on the host (slots beyond it are never looked at).
            queries: ``(B, H, Q, D)``.
            k: neighbours, ``1 <= k <= held``.
        """
        ...

    def added(self, keys: Tensor, count: Tensor, kept: Tensor, slots: Tensor) -> None:
        """Pairs were written: candidate ``(b, n)`` at slot ``slots[b, n]`` where the ``(B, N)`` bool ``kept`` is True."""
        ...

    def cleared(self, rows: Tensor) -> None:
        """Streams where the ``(B,)`` bool ``rows`` is True were emptied."""
        ...

    def loaded(self, keys: Tensor, count: Tensor) -> None:
        """The whole memory was replaced (``load_state_dict``)."""
        ...


def chunked_topk(scores: Tensor, k: int, chunk: int = TOPK_CHUNK, limit: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` largest of ``scores (..., m)`` along the last dim and their indices, best first: what
    ``scores.topk(k)`` returns (up to the order of equal scores), by two small top-ks instead of one over ``m``.

    The scores are cut into chunks of ``chunk`` consecutive ones. Each of the true top ``k`` lies in a chunk whose
    maximum is at least the k-th largest score, and at most ``k`` chunks have such a maximum, so the ``k`` chunks
    with the largest maxima hold all of them: the answer is the top ``k`` of those chunks' ``k * chunk`` scores.
    The last ``m % chunk`` scores are always candidates. Costs one pass over the scores (the chunk maxima), a top-k
    over ``m / chunk`` maxima and one over ``k * chunk + m % chunk`` candidates.

    ``limit`` (broadcasting to ``scores.shape[:-1] + (1,)``): indices from it on count as ``-inf`` (empty slots),
    without a pass over the scores to mask them: chunks that start past it are dropped by their maxima, and one more
    chunk is taken for the one it cuts (whose maximum may be an empty slot's), whose candidates are then masked.
    """
    *lead, m = scores.shape
    chunks = m // chunk
    picked = min(k + (limit is not None), chunks)
    if picked == 0 or chunks < k:
        if limit is not None:
            scores = scores.masked_fill(torch.arange(m, device=scores.device) >= limit, float("-inf"))
        return scores.topk(min(k, m), dim=-1)
    body = scores[..., : chunks * chunk].unflatten(-1, (chunks, chunk))  # (..., chunks, chunk)
    maxima = body.amax(dim=-1)
    if limit is not None:
        maxima = maxima.masked_fill(torch.arange(chunks, device=scores.device) * chunk >= limit, float("-inf"))
    _, top_chunks = maxima.topk(picked, dim=-1)  # (..., picked)
    candidates = body.gather(-2, top_chunks.unsqueeze(-1).expand(*lead, picked, chunk)).flatten(-2)
    slots = (top_chunks.unsqueeze(-1) * chunk + torch.arange(chunk, device=scores.device)).flatten(-2)
    if m > chunks * chunk:  # the tail that fills no chunk
        tail = torch.arange(chunks * chunk, m, device=scores.device).expand(*lead, -1)
        candidates = torch.cat((candidates, scores[..., chunks * chunk :]), dim=-1)
        slots = torch.cat((slots, tail), dim=-1)
    if limit is not None:
        candidates = candidates.masked_fill(slots >= limit, float("-inf"))
    values, best = candidates.topk(k, dim=-1)
    return values, slots.gather(-1, best)


def _block_topk(scores: Tensor, k: int, limit: Tensor | None) -> tuple[Tensor, Tensor]:
    """Top-k along the last dim, indices from ``limit`` on masked: by chunks off the CPU, where the row is long
    enough (``CHUNKED_TOPK_MIN_CHUNKS``), else one masked topk."""
    by_chunks = CHUNKED_TOPK_ON_CPU or scores.device.type != "cpu"
    if by_chunks and scores.shape[-1] >= CHUNKED_TOPK_MIN_CHUNKS * k * TOPK_CHUNK:
        return chunked_topk(scores, k, TOPK_CHUNK, limit)
    if limit is not None:
        scores.masked_fill_(torch.arange(scores.shape[-1], device=scores.device) >= limit, float("-inf"))
    return scores.topk(min(k, scores.shape[-1]), dim=-1)


def exact_top_slots(keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """Exact top-k slots by ``query . key`` (see ``SearchBackend.search``), with scores computed in ``dtype``.

    Scores are computed one block of queries x memories at a time, with a running top-k merge, so no full score
    matrix is ever held. A few queries against many keys (``FEW_QUERIES``, ``STREAMED_KEY_BYTES``) are scored as
    keys @ queries^T.
    """
    q = queries.to(dtype)
    B, H, Q, D = q.shape
    budget = SCORE_BLOCK_ELEMENTS if q.device.type == "cpu" else ACCELERATOR_SCORE_BLOCK_ELEMENTS
    mem_block = min(held, max(MEMORY_BLOCK, budget // (B * H * Q)))
    q_block = max(1, min(Q, budget // (B * H * mem_block)))
    key_bytes = B * H * held * D * q.element_size()
    streamed = Q <= FEW_QUERIES and q.device.type == "cpu" and key_bytes >= STREAMED_KEY_BYTES
    count = count.view(B, 1, 1, 1)
    # usually no stream holds fewer than `held`; asking costs a device sync, which is free only on the CPU
    mask_empty = q.device.type != "cpu" or bool((count < held).any())
    best_scores, best_slots = [], []
    for q_start in range(0, Q, q_block):
        q_part = q[:, :, q_start : q_start + q_block]
        top_s: Tensor | None = None
        top_i: Tensor | None = None
        for m_start in range(0, held, mem_block):
            m_end = min(held, m_start + mem_block)
            block = keys[:, :, m_start:m_end].to(dtype)
            if streamed:
                scores = torch.matmul(block, q_part.transpose(-1, -2)).transpose(-1, -2)  # (B, H, Q, m)
            else:
                scores = torch.matmul(q_part, block.transpose(-1, -2))
            s, i = _block_topk(scores, k, count - m_start if mask_empty else None)
            i = i + m_start
            if top_s is not None:
                assert top_i is not None
                s = torch.cat((top_s, s), dim=-1)
                s, j = s.topk(min(k, s.shape[-1]), dim=-1)  # early blocks may be shorter than k
                i = torch.cat((top_i, i), dim=-1).gather(-1, j)
            top_s, top_i = s, i
        assert top_s is not None and top_i is not None
        best_scores.append(top_s)
        best_slots.append(top_i)
    scores, index = torch.cat(best_scores, dim=2), torch.cat(best_slots, dim=2)
    return index.masked_fill(scores == float("-inf"), -1)


class ExactSearch:
    """Exact search with torch, on the memory's device."""

    name = "exact"

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        return exact_top_slots(keys, count, held, queries, k)

    def added(self, keys: Tensor, count: Tensor, kept: Tensor, slots: Tensor) -> None:
        pass

    def cleared(self, rows: Tensor) -> None:
        pass

    def loaded(self, keys: Tensor, count: Tensor) -> None:
        pass


def _import_faiss(index: str):
    try:
        import faiss
    except ImportError:
        raise ImportError(f"index={index!r} needs faiss: pip install 'memorizing-transformers-pytorch[faiss]'") from None
    return faiss


class FaissFlatSearch(ExactSearch):
    """The exact search computed by ``faiss.knn`` on CPU (1.2-3.8x faster than torch there); torch elsewhere."""

    name = "flat"

    def __init__(self) -> None:
        _import_faiss(self.name)  # fails here, not at the first search; the module is not kept (memories copy)

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        if queries.device.type != "cpu":
            return exact_top_slots(keys, count, held, queries, k)
        faiss = _import_faiss(self.name)
        B, H, Q, _ = queries.shape
        out = torch.full((B, H, Q, k), -1, dtype=torch.long)
        q = queries.detach().float().contiguous().numpy()
        # faiss's settings are process-wide: set them for this search only
        saved = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_query_bs
        faiss.omp_set_num_threads(torch.get_num_threads())  # as many threads as torch is allowed
        faiss.cvar.distance_compute_blas_query_bs = FAISS_QUERY_BLOCK
        try:
            for row, row_held in enumerate(count.tolist()):
                if row_held == 0:
                    continue
                row_keys = keys[row, :, :row_held].float().numpy()  # slots 0..held-1 hold the pairs
                found = min(k, row_held)
                for head in range(H):
                    _, ids = faiss.knn(q[row, head], row_keys[head], found, faiss.METRIC_INNER_PRODUCT)
                    out[row, head, :, :found] = torch.from_numpy(ids)
        finally:
            faiss.omp_set_num_threads(saved[0])
            faiss.cvar.distance_compute_blas_query_bs = saved[1]
        return out


class AutoSearch(ExactSearch):
    """``flat`` for calls with at least ``min_faiss_queries`` queries per stream and head on CPU, ``exact`` for
    the rest. Measured at 64K memories: one generated token searched by torch ran at 44 tokens/s, by faiss at 32;
    a 512-token segment is 1.2-3.8x faster with faiss (docs/benchmarks.md). The threshold between is not tuned."""

    name = "auto"

    def __init__(self, min_faiss_queries: int = 64) -> None:
        self.min_faiss_queries = min_faiss_queries
        try:
            self.flat: FaissFlatSearch | None = FaissFlatSearch()
        except ImportError:
            self.flat = None

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        if self.flat is not None and queries.device.type == "cpu" and queries.shape[2] >= self.min_faiss_queries:
            return self.flat.search(keys, count, held, queries, k)
        return exact_top_slots(keys, count, held, queries, k)


class FaissIVFSearch:
    """One faiss ``IndexIVFFlat`` (inner product) per stream and head, with storage slots as ids.

    An overwritten slot is removed from its index, so FIFO eviction stays exact in what can be found. A stream
    is searched exactly until it holds ``train_size`` pairs: at first, and again after each clear until it
    refills. Centroids are trained once per stream, on its first full training set, and kept across clears;
    they are not saved, so ``loaded`` retrains them (a resumed run is not bit-exact with IVF).
    """

    name = "ivf"

    def __init__(self, rows: int, heads: int, dim: int, *, lists: int, probe: int, train_size: int) -> None:
        faiss = _import_faiss(self.name)
        self.rows, self.heads, self.train_size = rows, heads, train_size
        self.quantizers = [faiss.IndexFlatIP(dim) for _ in range(rows * heads)]  # the indexes do not own them
        self.indexes = [faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
                        for quantizer in self.quantizers]
        for index in self.indexes:
            index.nprobe = probe

    @property
    def ready(self) -> bool:
        return all(index.is_trained for index in self.indexes)

    def _index(self, row: int, head: int):
        return self.indexes[row * self.heads + head]

    def usable(self, count: Tensor) -> list[int]:
        """Streams searched with IVF: every head's index trained, and at least ``train_size`` pairs held."""
        held = count.tolist()
        return [row for row in range(self.rows) if held[row] >= self.train_size
                and all(self._index(row, head).is_trained for head in range(self.heads))]

    def _fill(self, keys: Tensor, held: int, row: int, head: int) -> None:
        """Adds every pair the stream holds (training the index first once it holds a training set)."""
        index = self._index(row, head)
        if held == 0 or (not index.is_trained and held < self.train_size):
            return
        row_keys = keys[row, head, :held].float().cpu().numpy()  # a full or never-wrapped ring: slots 0..held-1
        if not index.is_trained:
            index.train(row_keys)
        index.add_with_ids(row_keys, np.arange(held, dtype=np.int64))

    def added(self, keys: Tensor, count: Tensor, kept: Tensor, slots: Tensor) -> None:
        rows, cols = kept.nonzero(as_tuple=True)
        rows_cpu, slots_cpu = rows.cpu().numpy(), slots[rows, cols].cpu().numpy().astype(np.int64)
        for row in np.unique(rows_cpu).tolist():
            row_slots = slots_cpu[rows_cpu == row]
            for head in range(self.heads):
                index = self._index(row, head)
                if not index.is_trained:
                    self._fill(keys, int(count[row]), row, head)
                    continue
                row_keys = keys[row, head, torch.as_tensor(row_slots, device=keys.device)]
                index.remove_ids(row_slots)
                index.add_with_ids(row_keys.float().cpu().numpy(), row_slots)

    def cleared(self, rows: Tensor) -> None:
        for row in rows.nonzero(as_tuple=True)[0].tolist():
            for head in range(self.heads):
                self._index(row, head).reset()  # keeps the trained centroids

    def loaded(self, keys: Tensor, count: Tensor) -> None:
        self.cleared(torch.ones(self.rows, dtype=torch.bool))
        for row, held in enumerate(count.tolist()):
            for head in range(self.heads):
                self._fill(keys, held, row, head)

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        """IVF for the streams whose index is trained and that hold enough pairs; exact search for the rest."""
        rows = self.usable(count)
        if len(rows) < self.rows:
            index = exact_top_slots(keys, count, held, queries, k)
        else:
            index = torch.full(queries.shape[:3] + (k,), -1, dtype=torch.long)
        q = queries.float().cpu().numpy()
        for row in rows:
            for head in range(self.heads):
                _, ids = self._index(row, head).search(q[row, head], k)
                index[row, head] = torch.from_numpy(ids).to(index.device)
        return index


def reranked_top_slots(keys: Tensor, keys16: Tensor, count: Tensor, held: int, queries: Tensor, k: int,
                       candidates: int) -> tuple[Tensor, Tensor]:
    """The top ``k`` by float32 scores among the top ``candidates`` slots by bfloat16 scores.

    Args:
        keys: ``(B, H, M, D)`` the stored keys (re-ranked in float32 from these).
        keys16: the same keys in bfloat16 (the candidates are searched there).
        count, held, queries, k: as ``SearchBackend.search``; ``k <= candidates``.

    Returns:
        scores ``(B, H, Q, k)`` float32, best first (``-inf`` where none), and their slots (``-1`` where none).
    """
    found = exact_top_slots(keys16, count, held, queries, min(candidates, held), dtype=torch.bfloat16)
    B, H, Q, C = found.shape
    D = keys.shape[-1]
    q = queries.float()
    # re-rank a block of queries at a time: the gathered candidate keys are (B, H, q_block, C, D)
    q_block = max(1, min(Q, SCORE_BLOCK_ELEMENTS // (B * H * C * D)))
    best_scores, best_slots = [], []
    for start in range(0, Q, q_block):
        slots = found[:, :, start : start + q_block]  # (B, H, q, C)
        n = slots.shape[2]
        rows = slots.clamp(min=0).reshape(B, H, n * C, 1).expand(-1, -1, -1, D)
        candidate_keys = keys.gather(2, rows).view(B, H, n, C, D).float()
        scores = torch.einsum("bhqd,bhqcd->bhqc", q[:, :, start : start + n], candidate_keys)
        scores, best = scores.masked_fill(slots < 0, float("-inf")).topk(k, dim=-1)
        best_scores.append(scores)
        best_slots.append(slots.gather(-1, best).masked_fill(scores == float("-inf"), -1))
    return torch.cat(best_scores, dim=2), torch.cat(best_slots, dim=2)


class BFloat16Search:
    """Exact-ish search with bfloat16 scores, for accelerators: the top ``candidates_per_k * k`` slots by
    bfloat16 scores are re-ranked exactly in float32, and the best k returned (``reranked_top_slots``).

    The candidates are scored from a bfloat16 copy of the keys, kept up to date by the hooks (none when the
    memory stores bfloat16 itself); it costs half the float32 keys' memory. A true neighbour is missed only when
    bfloat16 rounding puts it below ``candidates_per_k * k`` others.
    """

    name = "bf16"

    def __init__(self, candidates_per_k: int = 8) -> None:
        self.candidates_per_k = candidates_per_k
        self.keys16: Tensor | None = None  # (B, H, M, D) bfloat16; None until the first add

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        keys16 = keys if keys.dtype == torch.bfloat16 else self.keys16
        assert keys16 is not None
        return reranked_top_slots(keys, keys16, count, held, queries, k, self.candidates_per_k * k)[1]

    def added(self, keys: Tensor, count: Tensor, kept: Tensor, slots: Tensor) -> None:
        if keys.dtype == torch.bfloat16:
            return
        if self.keys16 is None:
            self.keys16 = keys.to(torch.bfloat16)
            return
        # copy every slot the add may have touched, from the keys as they now are (untouched slots are unchanged)
        rows = torch.arange(slots.shape[0], device=slots.device).unsqueeze(1).expand_as(slots)
        self.keys16[rows, :, slots] = keys[rows, :, slots].to(torch.bfloat16)

    def cleared(self, rows: Tensor) -> None:
        pass  # slots beyond a stream's count are never searched

    def loaded(self, keys: Tensor, count: Tensor) -> None:
        self.keys16 = None if keys.dtype == torch.bfloat16 else keys.to(torch.bfloat16)


class FusedSearch(ExactSearch):
    """Top-k search in two stages, for GPUs (``search_kernels.py`` has the kernels and the torch equivalents):

    1. the largest score of each chunk of ``chunk`` slots, computed on tensor cores (tf32x3: three tf32 products,
       off by at most ``m = score_error_bound x |q| max |k|``), so only ``1 / chunk`` of the scores leaves the chip;
    2. exact float32 scores of the slots of the ``chunks_per_k * k`` chunks with the largest maxima; the best ``k``
       of them are returned. With exact maxima, the ``k`` best chunks hold every top-k slot (``chunked_topk``),
       so ``chunks_per_k=1`` needs only the first stage's error to be covered, which the check below does.

    No slot left out scores more than ``U = `` (the smallest kept stage-1 maximum) ``+ m``, so the i-th score
    returned is at least the exact i-th best minus ``U - `` (the k-th score returned). A block of queries is
    accepted when that is at most ``slack x m`` for each of its queries; else the block is searched again by
    ``exact_top_slots`` (``fallbacks`` counts the calls where a block needed it). ``slack=0``: exact up to equal
    scores, but it needs ``chunks_per_k >= 2`` (a gap between the kept maxima and the k-th score), and many equal
    keys (a repeated n-gram gives the first memorizing layer one key per copy) then fail it; the default 2 accepts
    them, and bounds what any answer can lose at ``2m`` (about 1e-4 for unit vectors of width 64; the real
    stage-1 error is far smaller, docs/benchmarks.md). The exact scores assume float32 matmuls stay float32
    (``torch.set_float32_matmul_precision("highest")``, torch's default) wherever torch computes them.

    Calls with fewer than ``min_queries`` queries per stream and head (generation) go to ``exact_top_slots``.
    It keeps no index of its own: the write, clear and load hooks are ``ExactSearch``'s (none).

    Raises (at construction): ValueError for a chunk that is not a power of two up to 64, ``chunks_per_k < 1``, a
    negative slack or ``min_queries``.
    """

    name = "fused"

    def __init__(self, chunk: int = 16, chunks_per_k: int = 1, slack: float = 2.0, min_queries: int = 16) -> None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or not 1 <= chunk <= 64 or chunk & (chunk - 1):
            raise ValueError(f"chunk must be a power of two from 1 to 64, got {chunk!r}")
        if isinstance(chunks_per_k, bool) or not isinstance(chunks_per_k, int) or chunks_per_k < 1:
            raise ValueError(f"chunks_per_k must be an int >= 1, got {chunks_per_k!r}")
        if not slack >= 0:
            raise ValueError(f"slack must be >= 0, got {slack!r}")
        if isinstance(min_queries, bool) or not isinstance(min_queries, int) or min_queries < 0:
            raise ValueError(f"min_queries must be an int >= 0, got {min_queries!r}")
        self.chunk, self.chunks_per_k, self.slack, self.min_queries = chunk, chunks_per_k, slack, min_queries
        self.searches = self.fallbacks = 0

    def search(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int) -> Tensor:
        B, H, Q, D = queries.shape
        if Q < self.min_queries:  # a generated token: a tile of 64 queries on the tensor cores would be mostly empty
            return exact_top_slots(keys, count, held, queries, k)
        chunks = -(-held // self.chunk)
        # a block of queries' first-stage maxima (and, in torch, its scores) within the score budget
        budget = SCORE_BLOCK_ELEMENTS if queries.device.type == "cpu" else ACCELERATOR_SCORE_BLOCK_ELEMENTS
        q_block = max(1, min(Q, budget // (B * H * chunks)))
        # the largest key norm, for the error bound (without a float32 copy of bfloat16 keys)
        key_norm = torch.linalg.vector_norm(keys[:, :, :held], dim=-1, dtype=torch.float32).amax(dim=-1)  # (B, H)
        self.searches += 1
        parts, fell_back = [], False
        for start in range(0, Q, q_block):
            part = queries[:, :, start : start + q_block]
            slots = self._search_block(keys, count, held, part, k, key_norm)
            if slots is None:
                fell_back = True
                slots = exact_top_slots(keys, count, held, part, k)
            parts.append(slots)
        self.fallbacks += fell_back
        return torch.cat(parts, dim=2)

    def _search_block(self, keys: Tensor, count: Tensor, held: int, queries: Tensor, k: int,
                      key_norm: Tensor) -> Tensor | None:
        """The two stages for a block of queries: slots, or None where the check fails for any query."""
        maxima = chunk_maxima(queries, keys, count, held, self.chunk)  # (B, H, Q, chunks)
        kept = min(maxima.shape[-1], self.chunks_per_k * k)
        top_maxima, picked = maxima.topk(kept, dim=-1)
        scores = chunk_scores(queries, keys, count, picked, self.chunk)  # (B, H, Q, kept * chunk)
        best, j = scores.topk(k, dim=-1)
        slots = picked.gather(-1, j // self.chunk) * self.chunk + j % self.chunk
        if kept < maxima.shape[-1]:
            margin = score_error_bound(queries.shape[-1]) * queries.float().norm(dim=-1) * key_norm[..., None]
            last = top_maxima[..., -1]  # no chunk left out has a larger stage-1 maximum
            accepted = (last == float("-inf")) | (last + margin - best[..., -1] <= self.slack * margin)
            if not bool(accepted.all()):
                return None
        return slots.masked_fill(best == float("-inf"), -1)


def make_backend(index: str, *, rows: int, heads: int, dim: int, max_memories: int, ivf_lists: int = 256,
                 ivf_probe: int = 16, ivf_train_size: int | None = None) -> SearchBackend:
    """The backend named ``index`` (one of ``INDEXES``) for a memory of this shape.

    Raises:
        ValueError: an unknown index or IVF settings out of range. ImportError: faiss missing for flat/ivf.
    """
    if index == "auto":
        return AutoSearch()
    if index == "exact":
        return ExactSearch()
    if index == "flat":
        return FaissFlatSearch()
    if index == "bf16":
        return BFloat16Search()
    if index == "fused":
        return FusedSearch()
    if index == "ivf":
        for name, value in (("ivf_lists", ivf_lists), ("ivf_probe", ivf_probe)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        train = 39 * ivf_lists if ivf_train_size is None else ivf_train_size
        if isinstance(train, bool) or not isinstance(train, int) or train < ivf_lists:
            raise ValueError(f"ivf_train_size must be an int >= ivf_lists ({ivf_lists}), got {train!r}")
        lists = min(ivf_lists, max_memories)  # k-means needs at least one training point per list
        return FaissIVFSearch(rows, heads, dim, lists=lists, probe=min(ivf_probe, lists),
                              train_size=max(lists, min(train, max_memories)))
    raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
