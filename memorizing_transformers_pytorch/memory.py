"""External kNN memory: one FIFO ring buffer of (key, value) pairs per document stream.

``KNNMemory`` is the store: a write pointer and a count per stream, and a search backend (``search.py``) that
finds the nearest keys. Its public methods (``add``, ``search``, ``clear``) validate their inputs; the model
calls the trusted ``store`` and ``lookup``, which only assert shapes, so the hot path has no host syncs for
validation.

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
from typing import NamedTuple

import torch
from torch import Tensor

from .search import INDEXES, SearchBackend, make_backend

__all__ = ["KNNMemory", "KNNMemoryList", "Retrieved", "INDEXES"]


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


class Retrieved(NamedTuple):
    """What ``KNNMemory.lookup`` returns for queries ``(B, H, Q, D)``.

    key_values: ``(B, H, Q, k, 2, D)`` best first, each key with its own value; zero where not found.
    mask: ``(B, H, Q, k)`` bool, False where the stream held fewer than k pairs.
    ages: ``(B, H, Q, k)`` long, pairs added to the stream after each hit (0 = the newest), or None.
    """

    key_values: Tensor
    mask: Tensor
    ages: Tensor | None


class KNNMemory:
    """Per-stream FIFO memory of (key, value) pairs with top-k inner-product search.

    Args:
        dim: feature dimension D of keys and values.
        max_memories: capacity M of each stream. When a stream is full, each new
            pair overwrites that stream's oldest pair.
        num_indices: number of streams B (the batch size); stream ``b`` belongs to
            batch row ``b``.
        heads: number of key/value heads H stored side by side per stream. With
            ``heads == 1`` the head axis may be left out of every call.
        index: the search backend (``search.py``). ``"auto"`` (default): the fastest exact search, ``"flat"``
            when faiss is installed, else ``"exact"``. ``"exact"``: blocked exact search with torch on the
            memory's device. ``"flat"``: the same exact search by faiss's kernels on CPU (1.2-3.8x faster
            there), ``"exact"`` on other devices. ``"ivf"``: an approximate faiss
            ``IndexIVFFlat`` per stream and head on CPU, for large memories; exact in what it holds after
            FIFO eviction, and exact search for a stream until it holds ``ivf_train_size`` pairs (default
            ``39 * ivf_lists``). ``"bf16"``: for GPUs, torch search in bfloat16 for ``8k`` candidates, re-ranked
            exactly in float32 (``search.BFloat16Search``; keeps a bfloat16 copy of float32 keys).
        ivf_lists, ivf_probe: inverted lists per index and lists scanned per query
            (``ivf_probe == ivf_lists`` scans everything: exact).
        keep_first: the first pairs of each stream (since its last clear) that are never overwritten: the FIFO
            ring then turns over the other ``max_memories - keep_first`` slots. A pretrained model's first tokens
            are its attention sinks (StreamingLLM, Xiao et al. 2024); evicting them from a memory that its own
            attention reads hurts more than having no memory at all (dev/LOG.md). 0: plain FIFO.

    Raises:
        TypeError, ValueError: for arguments of the wrong type or range.
    """

    def __init__(self, dim: int, max_memories: int, num_indices: int, *, heads: int = 1, index: str = "auto",
                 ivf_lists: int = 256, ivf_probe: int = 16, ivf_train_size: int | None = None,
                 keep_first: int = 0) -> None:
        self.dim = _check_positive_int("dim", dim)
        self.max_memories = _check_positive_int("max_memories", max_memories)
        if isinstance(keep_first, bool) or not isinstance(keep_first, int) or not 0 <= keep_first < max_memories:
            raise ValueError(f"keep_first must be an int in [0, max_memories), got {keep_first!r}")
        self.keep_first = keep_first
        self.num_indices = _check_positive_int("num_indices", num_indices)
        self.heads = _check_positive_int("heads", heads)
        if index not in INDEXES:
            raise ValueError(f"index must be one of {INDEXES}, got {index!r}")
        self.index = index
        self.backend: SearchBackend = make_backend(index, rows=num_indices, heads=heads, dim=dim,
                                                   max_memories=max_memories, ivf_lists=ivf_lists,
                                                   ivf_probe=ivf_probe, ivf_train_size=ivf_train_size)
        # Allocated on the first add, on that data's device and dtype.
        # (B, H, 2, M, D): keys [:, :, 0] and values [:, :, 1], each (M, D) block contiguous, so a search
        # reads the keys without a copy and one indexed gather still returns each key with its value
        self.pairs: Tensor | None = None
        self.positions: Tensor | None = None  # (B, M) each pair's position in its stream (0 = first added)
        self.count = torch.zeros(num_indices, dtype=torch.long)  # (B,) pairs held
        self.write_index = torch.zeros(num_indices, dtype=torch.long)  # (B,) next slot
        self.total = torch.zeros(num_indices, dtype=torch.long)  # (B,) pairs added since the last clear
        # host-side upper bound of count.max(): how many slots a search looks at, known without a device sync
        self._held_bound = 0

    def __repr__(self) -> str:
        return (
            f"KNNMemory(dim={self.dim}, max_memories={self.max_memories}, "
            f"num_indices={self.num_indices}, heads={self.heads}, index={self.index!r}, held={self.count.tolist()})"
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
        B, _, N, _, _ = memories.shape
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a bool tensor")
            if mask.shape != (B, N):
                raise ValueError(f"mask must have shape {(B, N)}, got {tuple(mask.shape)}")
        if not torch.isfinite(memories).all():
            raise ValueError("memories contain NaN or infinite values")
        self.store(memories, mask)

    def store(self, pairs: Tensor, mask: Tensor | None = None) -> None:
        """``add`` without validation, for callers that built ``pairs (B, H, N, 2, D)`` themselves."""
        B, H, N, _, D = pairs.shape
        assert (B, H, D) == (self.num_indices, self.heads, self.dim), pairs.shape
        pairs = pairs.detach()
        if self.pairs is None:
            self._allocate(pairs.device, pairs.dtype)
        assert self.pairs is not None and self.positions is not None
        pairs = pairs.to(device=self.pairs.device, dtype=self.pairs.dtype)
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=self.pairs.device)
        mask = mask.to(self.pairs.device)
        M, P = self.max_memories, self.keep_first

        rank = mask.cumsum(1) - 1  # (B, N) order of each kept pair within its stream
        num_new = mask.sum(1)  # (B,)
        stream_position = self.total.unsqueeze(1) + rank  # (B, N)
        # the first P of a stream stay; of the others, a call keeps at most the newest M - P
        keep = mask & ((stream_position < P) | (rank >= (num_new - (M - P)).unsqueeze(1)))
        slot = self._slot(stream_position)  # (B, N)
        if N < M - P:
            # No host sync: every candidate writes. One that is not kept targets the first slot after this call's
            # writes (no kept pair writes there, as fewer than M - P are kept in the ring) and writes back what
            # that slot holds.
            slot = torch.where(keep, slot, self._slot(self.total + num_new).unsqueeze(1))
            rows = torch.arange(B, device=slot.device).unsqueeze(1).expand(B, N)
            # advanced indices around slices put the indexed axes first: (B, N, H, 2, D)
            held = self.pairs[rows, :, :, slot]
            self.pairs[rows, :, :, slot] = torch.where(keep[..., None, None, None], pairs.transpose(1, 2), held)
            self.positions[rows, slot] = torch.where(keep, self.total.unsqueeze(1) + rank, self.positions[rows, slot])
        else:  # a chunk at least as long as the ring: write the kept pairs only (a sync, rare)
            rows, cols = keep.nonzero(as_tuple=True)
            slots = slot[rows, cols]
            self.pairs[rows, :, :, slots] = pairs[rows, :, cols]  # (K, H, 2, D)
            self.positions[rows, slots] = self.total[rows] + rank[rows, cols]
        self.total = self.total + num_new
        self.write_index = self._slot(self.total)
        self.count = torch.clamp(self.count + num_new, max=M)
        self._held_bound = min(M, self._held_bound + N)
        self.backend.added(self.pairs[:, :, 0], self.count, keep, slot)

    def _slot(self, stream_position: Tensor) -> Tensor:
        """The slot of the pair at ``stream_position`` (pairs added since the stream's last clear, from 0)."""
        M, P = self.max_memories, self.keep_first
        return torch.where(stream_position < P, stream_position, P + (stream_position - P) % (M - P))

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
        self.clear_rows(self._row_mask(batch_indices))

    def clear_rows(self, rows: Tensor) -> None:
        """``clear`` for a ``(B,)`` bool mask on the memory's device, without validation or a host sync."""
        keep = (~rows).long()
        self.count = self.count * keep
        self.write_index = self.write_index * keep
        self.total = self.total * keep
        self.backend.cleared(rows)

    def _row_mask(self, batch_indices: int | Sequence[int] | Tensor | None) -> Tensor:
        """Validated stream selection as a ``(B,)`` bool mask."""
        B = self.num_indices
        mask = torch.zeros(B, dtype=torch.bool, device=self.device)
        if batch_indices is None:
            return ~mask
        if isinstance(batch_indices, Tensor):
            if batch_indices.dtype == torch.bool:
                if batch_indices.shape != (B,):
                    raise ValueError(f"a bool batch mask must have shape ({B},), got {tuple(batch_indices.shape)}")
                return batch_indices.to(self.device)
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
        mask[rows % B] = True
        return mask

    # --------------------------------------------------------------- search
    @torch.no_grad()
    def search(self, queries: Tensor, topk: int, *, with_ages: bool = False
               ) -> tuple[Tensor, Tensor] | tuple[Tensor, Tensor, Tensor]:
        """Maximum-inner-product search in each stream's own memory (exact unless ``index="ivf"``).

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
        found = self.lookup(queries.reshape(self.num_indices, self.heads, -1, self.dim), topk, with_ages=with_ages)
        key_values = found.key_values.view(*lead, topk, 2, self.dim).to(queries.device)
        mask = found.mask.view(*lead, topk).to(queries.device)
        if not with_ages:
            return key_values, mask
        assert found.ages is not None
        return key_values, mask, found.ages.view(*lead, topk).to(queries.device)

    @torch.no_grad()
    def lookup(self, queries: Tensor, k: int, *, with_ages: bool = False) -> Retrieved:
        """``search`` without validation, for queries ``(B, H, Q, D)``; results on the memory's device."""
        B, H, Q, D = queries.shape
        assert (B, H, D) == (self.num_indices, self.heads, self.dim), queries.shape
        held = self._held_bound
        if self.pairs is not None and self.device.type == "cpu":
            held = int(self.count.max())  # the exact bound is free on the host
        if self.pairs is None or held == 0 or Q == 0:
            dtype = self.pairs.dtype if self.pairs is not None else queries.dtype
            device = self.pairs.device if self.pairs is not None else queries.device
            zeros = torch.zeros(B, H, Q, k, dtype=torch.long, device=device)
            return Retrieved(torch.zeros(B, H, Q, k, 2, D, dtype=dtype, device=device), zeros.bool(),
                             zeros if with_ages else None)
        queries = queries.to(self.pairs.device)
        found_k = min(k, held)
        index = self.backend.search(self.pairs[:, :, 0], self.count, held, queries, found_k)
        index = index.to(self.pairs.device)
        found = index >= 0
        # rows of pairs.view(-1, D): key of (stream s, slot i) at 2*s*M + i, its value M rows later; gathering
        # the two interleaved gives (B, H, Q, k, 2, D) in one contiguous index_select
        M = self.max_memories
        key_rows = torch.arange(B * H, device=index.device).view(B, H, 1, 1) * (2 * M) + index.clamp(min=0)
        rows = torch.stack((key_rows, key_rows + M), dim=-1).view(-1)
        key_values = self.pairs.view(-1, D).index_select(0, rows).view(B, H, Q, found_k, 2, D)
        if index.device.type != "cpu" or not bool(found.all()):
            key_values = key_values * found[..., None, None]
        if found_k < k:  # fewer memories than asked for: pad with empty slots
            key_values = torch.cat((key_values, key_values.new_zeros(B, H, Q, k - found_k, 2, D)), dim=3)
            found = torch.cat((found, found.new_zeros(B, H, Q, k - found_k)), dim=3)
            index = torch.cat((index, index.new_full((B, H, Q, k - found_k), -1)), dim=3)
        ages = None
        if with_ages:
            assert self.positions is not None
            slot_positions = self.positions.gather(1, index.clamp(min=0).view(B, -1)).view(B, H, Q, k)
            ages = (self.total.view(B, 1, 1, 1) - 1 - slot_positions).masked_fill(index < 0, 0)
        return Retrieved(key_values, found, ages)

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
            state["pairs"], state["positions"] = self.pairs, self.positions
        return state

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Replaces the memory with a ``state_dict``'s tensors (copied).

        Raises:
            ValueError: a state of another shape, or with missing entries.
        """
        B, H, M, D = self.num_indices, self.heads, self.max_memories, self.dim
        missing = sorted({"count", "write_index", "total"} - set(state))
        if missing or ("pairs" in state) != ("positions" in state):
            raise ValueError(f"memory state lacks {missing or ['pairs' if 'positions' in state else 'positions']}")
        if state["count"].shape != (B,) or state["write_index"].shape != (B,) or state["total"].shape != (B,):
            raise ValueError(f"memory state is for {state['count'].shape[0]} streams, this memory has {B}")
        if "pairs" in state and state["pairs"].shape != (B, H, 2, M, D):
            raise ValueError(f"memory pairs must have shape {(B, H, 2, M, D)}, got {tuple(state['pairs'].shape)}")
        if "positions" in state and state["positions"].shape != (B, M):
            raise ValueError(f"memory positions must have shape {(B, M)}, got {tuple(state['positions'].shape)}")
        device = state["pairs"].device if "pairs" in state else self.device
        self.count, self.write_index, self.total = (state[name].to(device, torch.long, copy=True)
                                                    for name in ("count", "write_index", "total"))
        if "pairs" in state:
            self.pairs = state["pairs"].clone()
            self.positions = state["positions"].to(device, torch.long, copy=True)
        self._held_bound = int(self.count.max()) if B else 0
        if self.pairs is not None:  # a backend's own index is not saved: it rebuilds from the held pairs
            self.backend.loaded(self.pairs[:, :, 0], self.count)


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
            memory._row_mask(batch_indices)  # validate everywhere before changing anything
        for memory in self:
            memory.clear(batch_indices)
