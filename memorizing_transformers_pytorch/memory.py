"""External kNN memory: one FIFO ring buffer of (key, value) pairs per document stream.

Shapes used throughout:
    B  number of streams (``num_indices``; the batch size)
    H  key/value heads sharing the memory (``heads``; 1 for the seed's API)
    M  capacity per stream and head (``max_memories``)
    N  new pairs per ``add``
    Q  queries per stream and head
    D  feature dimension (``dim``)
    k  neighbours returned per query (``topk``)

Storage is plain torch tensors on the device of the first data added, so search
runs where the model runs and nothing is written to disk.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["KNNMemory", "KNNMemoryList", "INDEXES"]

INDEXES = ("exact", "flat", "ivf")

# Score blocks are at most this many elements (float32: 32 MiB), which bounds
# the extra memory a search needs whatever the memory size.
_SCORE_BLOCK_ELEMENTS = 1 << 23
_MEMORY_BLOCK = 16384
_FAISS_QUERY_BLOCK = 1024


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class KNNMemory:
    """Per-stream FIFO memory of (key, value) pairs with exact top-k inner-product search.

    Args:
        dim: feature dimension D of keys and values.
        max_memories: capacity M of each stream. When a stream is full, each new
            pair overwrites that stream's oldest pair.
        num_indices: number of streams B (the batch size); stream ``b`` belongs to
            batch row ``b``.
        heads: number of key/value heads H stored side by side per stream. With
            ``heads == 1`` the head axis may be left out of every call.
        index: ``"exact"`` (default): blocked exact search on the memory's device.
            ``"flat"``: the same exact search computed by faiss's blocked BLAS + heap
            kernels (the ``[faiss]`` extra) when the memory is on the CPU, where it is
            1.2-3.8x faster than the torch search here; on other devices it is ``"exact"``.
            ``"ivf"``: an approximate faiss ``IndexIVFFlat`` per stream and head (the
            ``[faiss]`` extra, CPU), for large memories on CPU. Its ids are the
            storage slots, and an overwritten slot is removed from it, so FIFO
            eviction stays exact in what can be found. Until each stream holds
            ``ivf_train_size`` pairs (default ``39 * ivf_lists``) its search stays
            exact: at first, and again after each ``clear`` until it refills. The
            centroids are trained once per stream, on its first full training set,
            and kept across ``clear``; they are not saved, so ``load_state_dict``
            retrains them (a resumed run is not bit-exact with IVF).
        ivf_lists, ivf_probe: inverted lists per index and lists scanned per query
            (``ivf_probe == ivf_lists`` scans everything: exact).

    Raises:
        TypeError, ValueError: for arguments of the wrong type or range.
    """

    def __init__(self, dim: int, max_memories: int, num_indices: int, *, heads: int = 1, index: str = "exact",
                 ivf_lists: int = 256, ivf_probe: int = 16, ivf_train_size: int | None = None) -> None:
        self.dim = _check_positive_int("dim", dim)
        self.max_memories = _check_positive_int("max_memories", max_memories)
        self.num_indices = _check_positive_int("num_indices", num_indices)
        self.heads = _check_positive_int("heads", heads)
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.index = index
        self._ivf: _IVFIndexes | None = None
        if index == "flat":
            _import_faiss(index)
        if index == "ivf":
            lists, probe = _check_positive_int("ivf_lists", ivf_lists), _check_positive_int("ivf_probe", ivf_probe)
            train = 39 * lists if ivf_train_size is None else _check_positive_int("ivf_train_size", ivf_train_size)
            if train < lists:
                raise ValueError(f"ivf_train_size ({train}) must be >= ivf_lists ({lists})")
            lists = min(lists, max_memories)  # k-means needs at least one training point per list
            self._ivf = _IVFIndexes(num_indices, heads, dim, lists=lists, probe=min(probe, lists),
                                    train_size=max(lists, min(train, max_memories)))
        # Allocated on the first add, on that data's device and dtype.
        # (B, H, 2, M, D): keys [:, :, 0] and values [:, :, 1], each (M, D) block contiguous, so a search
        # reads the keys without a copy and one indexed gather still returns each key with its value
        self.pairs: Tensor | None = None
        self.positions: Tensor | None = None  # (B, M) each pair's position in its stream (0 = first added)
        self.count = torch.zeros(num_indices, dtype=torch.long)  # (B,) pairs held
        self.write_index = torch.zeros(num_indices, dtype=torch.long)  # (B,) next slot
        self.total = torch.zeros(num_indices, dtype=torch.long)  # (B,) pairs added since the last clear

    def __repr__(self) -> str:
        return (
            f"KNNMemory(dim={self.dim}, max_memories={self.max_memories}, "
            f"num_indices={self.num_indices}, heads={self.heads}, held={self.count.tolist()})"
        )

    @property
    def device(self) -> torch.device:
        return self.count.device

    @property
    def keys(self) -> Tensor | None:
        """``(B, H, M, D)`` view of the stored keys (slots beyond ``count`` are stale)."""
        return None if self.pairs is None else self.pairs[:, :, 0]

    @property
    def values(self) -> Tensor | None:
        return None if self.pairs is None else self.pairs[:, :, 1]

    # ------------------------------------------------------------------ add
    def add(self, memories: Tensor, mask: Tensor | None = None) -> None:
        """Append pairs to each stream, overwriting that stream's oldest pairs when full.

        Args:
            memories: ``(B, N, 2, D)`` (key | value), or ``(B, H, N, 2, D)``.
            mask: optional ``(B, N)`` bool; only pairs where it is True are stored
                (in order), so each stream may receive a different number.
                If a stream receives more than M pairs, its newest M are kept.

        Raises:
            TypeError, ValueError: wrong dtype, shape or non-finite values. The
                memory is unchanged when an error is raised.
        """
        memories = self._as_5d(memories, "memories")
        if memories.shape[-2] != 2:
            raise ValueError(f"memories must hold (key, value) pairs on dim -2 (size 2), got shape {tuple(memories.shape)}")
        B, H, N, _, D = memories.shape
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=memories.device)
        else:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a bool tensor")
            if mask.shape != (B, N):
                raise ValueError(f"mask must have shape {(B, N)}, got {tuple(mask.shape)}")
            mask = mask.to(memories.device)
        if not torch.isfinite(memories).all():
            raise ValueError("memories contain NaN or infinite values")

        memories = memories.detach()
        if self.pairs is None:
            self._allocate(memories.device, memories.dtype)
        assert self.pairs is not None
        memories = memories.to(device=self.pairs.device, dtype=self.pairs.dtype)
        mask = mask.to(self.pairs.device)
        M = self.max_memories

        rank = mask.cumsum(1) - 1  # (B, N) order of each kept pair within its stream
        num_new = mask.sum(1)  # (B,)
        keep = mask & (rank >= (num_new - M).unsqueeze(1))
        slot = (self.write_index.unsqueeze(1) + rank) % M  # (B, N)
        rows, cols = keep.nonzero(as_tuple=True)
        slots = slot[rows, cols]
        # advanced indices around slices put the indexed axis first: (K, H, 2, D)
        new = memories[rows, :, cols]
        self.pairs[rows, :, :, slots] = new
        assert self.positions is not None
        self.positions[rows, slots] = self.total[rows] + rank[rows, cols]
        self.total = self.total + num_new
        self.write_index = (self.write_index + num_new) % M
        self.count = torch.clamp(self.count + num_new, max=M)
        if self._ivf is not None:
            self._ivf.update(self, rows, slots)

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        self.pairs = torch.zeros(self.num_indices, self.heads, 2, self.max_memories, self.dim, device=device, dtype=dtype)
        self.positions = torch.zeros(self.num_indices, self.max_memories, device=device, dtype=torch.long)
        self.count = self.count.to(device)
        self.write_index = self.write_index.to(device)
        self.total = self.total.to(device)

    # ---------------------------------------------------------------- clear
    def clear(self, batch_indices: int | Sequence[int] | Tensor | None = None) -> None:
        """Forget everything held by the given streams (all streams when None).

        Args:
            batch_indices: an int, a sequence of ints, an integer tensor of stream
                indices, or a ``(B,)`` bool tensor selecting streams.

        Raises:
            TypeError, ValueError: indices that are not integers or out of range.
        """
        rows = self._rows(batch_indices)
        self.count[rows] = 0
        self.write_index[rows] = 0
        self.total[rows] = 0
        if self._ivf is not None:
            self._ivf.reset(rows.tolist())

    def _rows(self, batch_indices: int | Sequence[int] | Tensor | None) -> Tensor:
        B = self.num_indices
        if batch_indices is None:
            return torch.arange(B, device=self.device)
        if isinstance(batch_indices, Tensor):
            if batch_indices.dtype == torch.bool:
                if batch_indices.shape != (B,):
                    raise ValueError(f"a bool batch mask must have shape ({B},), got {tuple(batch_indices.shape)}")
                return batch_indices.to(self.device).nonzero(as_tuple=True)[0]
            if batch_indices.is_floating_point() or batch_indices.is_complex():
                raise TypeError(f"batch indices must be integers, got {batch_indices.dtype}")
            rows = batch_indices.reshape(-1).to(device=self.device, dtype=torch.long)
        else:
            items = [batch_indices] if isinstance(batch_indices, int) else list(batch_indices)
            for item in items:
                if isinstance(item, bool) or not isinstance(item, int):
                    raise TypeError(f"batch indices must be ints, got {item!r}")
            rows = torch.tensor(items, dtype=torch.long, device=self.device)
        if rows.numel() and (rows.min() < -B or rows.max() >= B):
            raise ValueError(f"batch indices must be in [0, {B}), got {rows.tolist()}")
        return rows % B

    # --------------------------------------------------------------- search
    @torch.no_grad()
    def search(self, queries: Tensor, topk: int, *, with_ages: bool = False
               ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Exact maximum-inner-product search in each stream's own memory.

        Args:
            queries: ``(B, ..., D)``; with ``heads > 1``, ``(B, H, ..., D)``.
            topk: number k of pairs to return per query.
            with_ages: also return each pair's age.

        Returns:
            key_values: ``(B, ..., k, 2, D)`` the k pairs with the largest
                ``query . key``, best first, each key with its own value.
            mask: ``(B, ..., k)`` bool, False where the stream holds fewer than k
                pairs; those slots are zero-filled.
            ages (with ``with_ages``): ``(B, ..., k)`` long, how many pairs were
                added to the stream after each one (0 = the newest); 0 in empty slots.

        Raises:
            TypeError, ValueError: wrong shape, dtype or non-finite queries.
        """
        topk = _check_positive_int("topk", topk)
        if not isinstance(queries, Tensor) or not queries.is_floating_point():
            raise TypeError("queries must be a floating point tensor")
        if queries.ndim < 2 or queries.shape[0] != self.num_indices or queries.shape[-1] != self.dim:
            raise ValueError(
                f"queries must have shape ({self.num_indices}, ..., {self.dim}), got {tuple(queries.shape)}"
            )
        if self.heads > 1 and (queries.ndim < 3 or queries.shape[1] != self.heads):
            raise ValueError(
                f"queries must have shape ({self.num_indices}, {self.heads}, ..., {self.dim}), got {tuple(queries.shape)}"
            )
        if not torch.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")

        lead = queries.shape[:-1]
        B, H, D = self.num_indices, self.heads, self.dim
        q = queries.reshape(B, H, -1, D)  # (B, H, Q, D)
        Q = q.shape[2]
        held = int(self.count.max()) if self.pairs is not None else 0
        if held == 0 or Q == 0:
            dtype = self.pairs.dtype if self.pairs is not None else queries.dtype
            key_values = torch.zeros(*lead, topk, 2, D, dtype=dtype, device=queries.device)
            mask = torch.zeros(*lead, topk, dtype=torch.bool, device=queries.device)
            return (key_values, mask, torch.zeros(*lead, topk, dtype=torch.long, device=queries.device)
                    ) if with_ages else (key_values, mask)
        assert self.pairs is not None
        q = q.to(self.pairs.device)
        k = min(topk, held)
        index = self._find(q, k)  # (B, H, Q, k)
        found = index >= 0
        # rows of pairs.view(-1, D): key of (stream s, slot i) at 2*s*M + i, its value M rows later; gathering
        # the two interleaved gives (B, H, Q, k, 2, D) in one contiguous index_select
        M = self.max_memories
        key_rows = torch.arange(B * H, device=q.device).view(B, H, 1, 1) * (2 * M) + index.clamp(min=0)
        rows = torch.stack((key_rows, key_rows + M), dim=-1).view(-1)
        key_values = self.pairs.view(-1, D).index_select(0, rows).view(B, H, Q, k, 2, D)
        if not bool(found.all()):
            key_values = key_values * found[..., None, None]
        if k < topk:  # fewer memories than asked for: pad with empty slots
            key_values = torch.cat((key_values, key_values.new_zeros(B, H, Q, topk - k, 2, D)), dim=3)
            found = torch.cat((found, found.new_zeros(B, H, Q, topk - k)), dim=3)
            index = torch.cat((index, index.new_full((B, H, Q, topk - k), -1)), dim=3)
        key_values = key_values.view(*lead, topk, 2, D).to(queries.device)
        mask = found.view(*lead, topk).to(queries.device)
        if not with_ages:
            return key_values, mask
        assert self.positions is not None
        slot_positions = self.positions.gather(1, index.clamp(min=0).view(B, -1)).view(B, H, Q, -1)
        ages = (self.total.view(B, 1, 1, 1) - 1 - slot_positions).masked_fill(index < 0, 0)
        return key_values, mask, ages.view(*lead, topk).to(queries.device)

    def _find(self, q: Tensor, k: int) -> Tensor:
        """Top-k slot indices ``(B, H, Q, k)`` for queries ``(B, H, Q, D)`` with the memory's index; -1 where a
        stream holds fewer than k pairs (or an IVF list ran short)."""
        # IVF for the streams whose index is trained and that hold enough pairs; exact search for the rest
        use_ivf = self._ivf.usable(self.count) if self._ivf is not None else []
        if self._ivf is not None and len(use_ivf) == q.shape[0]:
            return self._ivf.search(q, k, use_ivf).to(q.device)
        if self.index == "flat" and q.device.type == "cpu":
            return self._faiss_top_indices(q, k)
        index = self._top_indices(q, k)
        if self._ivf is not None and use_ivf:
            approximate = self._ivf.search(q, k, use_ivf).to(q.device)
            index[use_ivf] = approximate[use_ivf]
        return index

    def _top_indices(self, q: Tensor, k: int) -> Tensor:
        """Exact top-k slot indices ``(B, H, Q, k)`` by ``q . key``, best first; -1 for empty slots.

        Scores are computed in float32, one block of queries x memories at a time, with a
        running top-k merge, so no full score matrix is ever held.
        """
        assert self.pairs is not None
        keys = self.pairs[:, :, 0]  # (B, H, M, D)
        q = q.float()
        B, H, Q, _ = q.shape
        held = int(self.count.max())
        mem_block = min(held, _MEMORY_BLOCK)
        q_block = max(1, min(Q, _SCORE_BLOCK_ELEMENTS // (B * H * mem_block)))
        empty = torch.arange(held, device=q.device).view(1, 1, 1, held) >= self.count.view(B, 1, 1, 1)
        any_empty = bool(empty.any())  # usually False: all streams hold the same number
        best_scores, best_slots = [], []
        for q_start in range(0, Q, q_block):
            q_part = q[:, :, q_start : q_start + q_block]
            top_s: Tensor | None = None
            top_i: Tensor | None = None
            for m_start in range(0, held, mem_block):
                m_end = min(held, m_start + mem_block)
                scores = torch.matmul(q_part, keys[:, :, m_start:m_end].float().transpose(-1, -2))
                if any_empty:
                    scores.masked_fill_(empty[..., m_start:m_end], float("-inf"))
                s, i = scores.topk(min(k, m_end - m_start), dim=-1)
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

    def _faiss_top_indices(self, q: Tensor, k: int) -> Tensor:
        """``_top_indices`` computed by ``faiss.knn`` (blocked BLAS scores with a heap per query), on CPU."""
        assert self.pairs is not None
        faiss = _import_faiss(self.index)
        B, H, Q, _ = q.shape
        out = torch.full((B, H, Q, k), -1, dtype=torch.long)
        queries = q.detach().float().contiguous().numpy()
        # faiss's settings are process-wide: set them for this search only
        saved = faiss.omp_get_max_threads(), faiss.cvar.distance_compute_blas_query_bs
        faiss.omp_set_num_threads(torch.get_num_threads())  # as many threads as torch is allowed
        # 1,024 x 1,024 score blocks instead of faiss's 4,096 x 1,024: 17-27% faster here at 16K-65K memories
        faiss.cvar.distance_compute_blas_query_bs = _FAISS_QUERY_BLOCK
        try:
            for row, held in enumerate(self.count.tolist()):
                if held == 0:
                    continue
                keys = self.pairs[row, :, 0, :held].float().numpy()  # slots 0..held-1 hold the pairs
                found = min(k, held)
                for head in range(H):
                    _, ids = faiss.knn(queries[row, head], keys[head], found, faiss.METRIC_INNER_PRODUCT)
                    out[row, head, :, :found] = torch.from_numpy(ids)
        finally:
            faiss.omp_set_num_threads(saved[0])
            faiss.cvar.distance_compute_blas_query_bs = saved[1]
        return out

    # --------------------------------------------------------------- helpers
    def _as_5d(self, memories: Tensor, name: str) -> Tensor:
        if not isinstance(memories, Tensor) or not memories.is_floating_point():
            raise TypeError(f"{name} must be a floating point tensor, got {type(memories).__name__}"
                            + (f" of dtype {memories.dtype}" if isinstance(memories, Tensor) else ""))
        if memories.ndim == 4 and self.heads == 1:
            memories = memories.unsqueeze(1)
        expected = f"({self.num_indices}, N, 2, {self.dim})" if self.heads == 1 else ""
        expected5 = f"({self.num_indices}, {self.heads}, N, 2, {self.dim})"
        if memories.ndim != 5 or memories.shape[0] != self.num_indices or memories.shape[1] != self.heads or memories.shape[-1] != self.dim:
            options = f"{expected} or {expected5}" if expected else expected5
            raise ValueError(f"{name} must have shape {options}, got {tuple(memories.shape)}")
        return memories

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors that fully describe the memory (for checkpoints)."""
        state = {"count": self.count, "write_index": self.write_index, "total": self.total}
        if self.pairs is not None:
            assert self.positions is not None
            # saved as (B, H, M, 2, D), the layout of earlier checkpoints
            state["pairs"], state["positions"] = self.pairs.transpose(2, 3).contiguous(), self.positions
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        B, H, M, D = self.num_indices, self.heads, self.max_memories, self.dim
        if state["count"].shape != (B,) or state["write_index"].shape != (B,):
            raise ValueError(f"memory state is for {state['count'].shape[0]} streams, this memory has {B}")
        if "pairs" in state and state["pairs"].shape != (B, H, M, 2, D):
            raise ValueError(f"memory pairs must have shape {(B, H, M, 2, D)}, got {tuple(state['pairs'].shape)}")
        if "positions" in state and state["positions"].shape != (B, M):
            raise ValueError(f"memory positions must have shape {(B, M)}, got {tuple(state['positions'].shape)}")
        self.count = state["count"].clone().long()
        self.write_index = state["write_index"].clone().long()
        # checkpoints from before positions were stored: number the held pairs 0 .. count - 1 in age order
        self.total = state["total"].clone().long() if "total" in state else self.count.clone()
        if "pairs" in state:
            self.pairs = state["pairs"].transpose(2, 3).contiguous()
            if "positions" in state:
                self.positions = state["positions"].clone().long()
            else:
                slots = torch.arange(M, device=self.write_index.device).view(1, M)
                oldest = (self.write_index - self.count).view(B, 1)
                self.positions = (slots - oldest) % M + (self.total - self.count).view(B, 1)
            self.positions = self.positions.to(self.pairs.device)
            for name in ("count", "write_index", "total"):
                setattr(self, name, getattr(self, name).to(self.pairs.device))
        if self._ivf is not None:  # the index is not saved: rebuild it from the held pairs
            self._ivf.rebuild(self)


def _import_faiss(index: str):
    try:
        import faiss
    except ImportError:
        raise ImportError(f"index={index!r} needs faiss: pip install 'memorizing-transformers-pytorch[faiss]'") from None
    return faiss


class _IVFIndexes:
    """One faiss ``IndexIVFFlat`` (inner product) per stream and head, with storage slots as ids."""

    def __init__(self, rows: int, heads: int, dim: int, *, lists: int, probe: int, train_size: int) -> None:
        faiss = _import_faiss("ivf")
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
        """Streams searched with IVF: every head's index trained, and at least ``train_size`` pairs held
        (a stream just cleared at a document start is searched exactly until it refills)."""
        held = count.tolist()
        return [row for row in range(self.rows) if held[row] >= self.train_size
                and all(self._index(row, head).is_trained for head in range(self.heads))]

    def _fill(self, memory: KNNMemory, row: int, head: int) -> None:
        """Adds every pair the stream holds (training the index first once it holds a training set)."""
        assert memory.pairs is not None
        held = int(memory.count[row])
        index = self._index(row, head)
        if held == 0 or (not index.is_trained and held < self.train_size):
            return
        keys = memory.pairs[row, head, 0, :held].float().cpu().numpy()  # a full or never-wrapped ring: slots 0..held-1
        if not index.is_trained:
            index.train(keys)
        index.add_with_ids(keys, np.arange(held, dtype=np.int64))

    def update(self, memory: KNNMemory, rows: Tensor, slots: Tensor) -> None:
        """Mirror new pairs (written at ``slots`` of ``rows``) into the indexes; train them when due."""
        assert memory.pairs is not None
        rows_cpu, slots_cpu = rows.cpu().numpy(), slots.cpu().numpy().astype(np.int64)
        for row in np.unique(rows_cpu).tolist():
            row_slots = slots_cpu[rows_cpu == row]
            for head in range(self.heads):
                index = self._index(row, head)
                if not index.is_trained:
                    self._fill(memory, row, head)
                    continue
                keys = memory.pairs[row, head, 0, torch.as_tensor(row_slots, device=memory.pairs.device)]
                index.remove_ids(row_slots)
                index.add_with_ids(keys.float().cpu().numpy(), row_slots)

    def reset(self, rows: list[int]) -> None:
        for row in rows:
            for head in range(self.heads):
                self._index(row, head).reset()  # keeps the trained centroids

    def rebuild(self, memory: KNNMemory) -> None:
        self.reset(list(range(self.rows)))
        if memory.pairs is not None:
            for row in range(self.rows):
                for head in range(self.heads):
                    self._fill(memory, row, head)

    def search(self, q: Tensor, k: int, rows: list[int]) -> Tensor:
        """Slot indices ``(B, H, Q, k)`` for queries ``(B, H, Q, D)`` in ``rows`` (others -1); -1 where a list ran short."""
        B, H, Q, _ = q.shape
        out = torch.full((B, H, Q, k), -1, dtype=torch.long)
        queries = q.float().cpu().numpy()
        for row in rows:
            for head in range(H):
                _, ids = self._index(row, head).search(queries[row, head], k)
                out[row, head] = torch.from_numpy(ids)
        return out


class KNNMemoryList(list):
    """The memories of a model's memorizing layers, one ``KNNMemory`` per layer."""

    def __init__(self, memories: Iterable[KNNMemory] = ()) -> None:
        super().__init__(memories)
        for memory in self:
            if not isinstance(memory, KNNMemory):
                raise TypeError(f"KNNMemoryList holds KNNMemory objects, got {type(memory).__name__}")

    def clear_memory(self, batch_indices: int | Sequence[int] | Tensor | None = None) -> None:
        """Clear the given streams (all when None) in every layer's memory."""
        for memory in self:
            memory._rows(batch_indices)  # validate everywhere before changing anything
        for memory in self:
            memory.clear(batch_indices)
