"""The Memorizing Transformer: a decoder whose memorizing layers also attend to a kNN memory.

``extend`` reads tokens that continue the current segment of each document stream: it lays out where
documents start inside the segment, builds each layer's attention mask (relative positions, causality, document
boundaries, padding), runs the blocks, and, when the segment is complete, lets each layer roll its XL cache and
write its kNN memory (``xl_cache.write_memory``) after it has read. ``step`` (``segment.StreamReader``) drives
it over any number of tokens; the seed's ``forward`` is one whole segment; generation (``generation.py``) is
``step`` a token at a time.

Shapes:
    B batch (= document streams), n tokens in the segment, P tokens of XL cache,
    H query heads, Hkv key/value heads, Dh head width, k retrieved memories per query.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import masks as local_masks
from .attention import Attention
from .config import MemorizingTransformerConfig
from .generation import GenerationOutput, generate
from .knn_attention import retrieve_eagerly_under_compile
from .masks import FlexMask, dense_mask, flex_mask
from .memory import KNNMemory, KNNMemoryList
from .positions import RelativePositionBias
from .segment import PendingSegment, PrefixBuffer, StreamReader, StreamState
from .token_shift import TokenShift
from .xl_cache import XLCache, write_memory

__all__ = ["MemorizingTransformer", "XLCache", "IGNORE_INDEX", "DocumentLayout", "document_layout", "check_tokens",
           "check_knn_memories"]

IGNORE_INDEX = -100


class DocumentLayout(NamedTuple):
    """Where documents begin and end inside one segment, per row.

    doc: ``(B, n)`` document number within the segment; 0 continues the previous segment.
    keep: ``(B, n)`` tokens that may enter the XL cache and kNN memory: the row's
        last document, without padding.
    restart: ``(B,)`` rows whose earlier memories belong to a finished document.
    key_ok: ``(B, n)`` tokens other tokens may attend to (not padding).
    """

    doc: Tensor
    keep: Tensor
    restart: Tensor
    key_ok: Tensor


def document_layout(x: Tensor, *, sos_id: int | None, eos_id: int | None, pad_id: int | None) -> DocumentLayout:
    """Where documents begin and end in segment ``x (B, n)``: a start token (``sos_id``) begins a document, and
    so does the token after an end token (``eos_id``); ``pad_id`` tokens are padding."""
    starts = torch.zeros_like(x, dtype=torch.bool)
    ends_segment = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    if sos_id is not None:
        starts |= x == sos_id
    if eos_id is not None:
        is_eos = x == eos_id
        starts[:, 1:] |= is_eos[:, :-1]  # the token after an eos starts a document
        ends_segment = is_eos[:, -1]
    doc = starts.long().cumsum(dim=1)
    last_doc = doc[:, -1] + ends_segment.long()
    key_ok = x != pad_id if pad_id is not None else torch.ones_like(starts)
    keep = (doc == last_doc[:, None]) & key_ok
    return DocumentLayout(doc=doc, keep=keep, restart=last_doc > 0, key_ok=key_ok)


class FeedForward(nn.Sequential):
    def __init__(self, config: MemorizingTransformerConfig) -> None:
        hidden = config.dim * config.ff_mult
        super().__init__(
            nn.Linear(config.dim, hidden),
            nn.GELU(),
            nn.Dropout(config.ff_dropout),
            nn.Linear(hidden, config.dim),
        )


class Block(nn.Module):
    """Pre-norm residual block: attention, then feed-forward."""

    def __init__(self, config: MemorizingTransformerConfig, *, memorizing: bool) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.dim)
        self.attn = Attention(config, memorizing=memorizing)
        self.ff_norm = nn.LayerNorm(config.dim)
        self.ff = FeedForward(config)
        # token_shift: the keys and queries of a memorizing layer also read its inputs N positions back
        self.shift = TokenShift(config.dim, config.token_shift) if memorizing and config.token_shift else None

    def forward(self, x: Tensor, key_shift: Tensor | None = None, query_shift: Tensor | None = None,
                **attention_args: Any) -> tuple[Tensor, Tensor, Tensor]:
        """``key_shift``, ``query_shift`` (``self.shift``'s, of the positions before): added to ``x`` before the
        normalisation, for the keys or the queries only."""
        key_input = None if key_shift is None else self.attn_norm(x + key_shift)
        query_input = None if query_shift is None else self.attn_norm(x + query_shift)
        out, k, v = self.attn(self.attn_norm(x), key_input=key_input, query_input=query_input, **attention_args)
        x = x + out
        x = x + self.ff(self.ff_norm(x))
        return x, k, v


class MemorizingTransformer(StreamReader, nn.Module):
    """Decoder-only transformer with kNN memory layers and a Transformer-XL cache.

    Build it from a config or from the config's fields as keyword arguments::

        MemorizingTransformer(num_tokens=256, dim=256, depth=4, memorizing_layers=(3,))
        MemorizingTransformer(MemorizingTransformerConfig(num_tokens=256))

    Read streams with ``step(tokens, state)`` (``state = new_state(batch_size=B, seq_len=n)``, see
    ``segment.py``), or one whole segment at a time with ``forward``.

    Raises:
        TypeError, ValueError: for an invalid configuration (see ``MemorizingTransformerConfig``).
    """

    def __init__(self, config: MemorizingTransformerConfig | None = None, **config_fields: Any) -> None:
        super().__init__()
        if config is None:
            try:
                config = MemorizingTransformerConfig(**config_fields)
            except TypeError as error:
                if "unexpected keyword" in str(error) or "missing" in str(error):
                    raise TypeError(f"MemorizingTransformer: {error}") from None
                raise
        elif config_fields:
            raise TypeError("pass either a config or keyword arguments, not both")
        if not isinstance(config, MemorizingTransformerConfig):
            raise TypeError(f"config must be a MemorizingTransformerConfig, got {type(config).__name__}")
        self.config = config
        c = config
        assert c.memorizing_layers is not None and c.xl_memory_layers is not None
        self.token_emb = nn.Embedding(c.num_tokens, c.dim)
        self.rel_pos = RelativePositionBias(heads=c.heads, num_buckets=c.rel_pos_num_buckets,
                                            max_distance=c.rel_pos_max_distance)
        self.rel_pos.focus_on_previous_tokens(c.previous_token_heads)
        self.layers = nn.ModuleList(
            Block(c, memorizing=layer in c.memorizing_layers) for layer in range(1, c.depth + 1)
        )
        self.norm = nn.LayerNorm(c.dim)
        self.to_logits = nn.Linear(c.dim, c.num_tokens, bias=False)
        nn.init.normal_(self.token_emb.weight, std=0.02)

    # ----------------------------------------------------------- memories
    def create_knn_memories(self, *, batch_size: int, max_memories: int | None = None) -> KNNMemoryList:
        """One empty ``KNNMemory`` per memorizing layer, with ``batch_size`` streams each.

        ``max_memories`` overrides the configured capacity (e.g. to evaluate with a
        larger memory than in training).
        """
        c = self.config
        size = c.max_knn_memories if max_memories is None else max_memories
        return KNNMemoryList(
            KNNMemory(dim=c.dim_head, max_memories=size, num_indices=batch_size, heads=c.kv_heads, index=c.knn_index,
                      ivf_lists=c.knn_ivf_lists, ivf_probe=c.knn_ivf_probe)
            for _ in c.memorizing_layers
        )

    def compile_layers(self, **options: Any) -> MemorizingTransformer:
        """Compiles each block with ``torch.compile(**options)`` (in place; returns the model). The memory
        search and write stay eager (graph breaks inside a memorizing block; the write runs between blocks),
        so memories behave exactly as without compiling. A new segment shape compiles again (training sees two:
        the first segment has no XL cache); after the first such recompile torch makes the shapes dynamic.
        """
        if self.config.attention_kernel == "flex" and self.token_emb.weight.device.type == "cpu":
            raise ValueError("compile_layers: with attention_kernel='flex' torch 2.13 fails to compile the layers on "
                             "CPU (inductor's CPU flex template); flex attention is compiled on its own already, so "
                             "compile the layers with attention_kernel='sdpa', or use flex without compile_layers")
        retrieve_eagerly_under_compile()
        # Every block shares Block.forward's code, so its compiled variants (memorizing or not, with an XL cache or
        # not, train or eval, autocast) count against one recompile limit, 8 by default: past it torch runs the
        # remaining variants eagerly (under bf16 autocast 4 blocks already did). Room for 8 per block:
        config = torch._dynamo.config
        name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
        setattr(config, name, max(getattr(config, name), 8 * len(self.layers)))
        for block in self.layers:
            block.compile(**options)
        return self

    # ------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        knn_memories: Sequence[KNNMemory] | None = None,
        xl_memories: Sequence[XLCache] | None = None,
        labels: Tensor | None = None,
        add_knn_memory: bool = True,
    ) -> tuple[Tensor, tuple[XLCache, ...] | None]:
        """Read one segment of each document stream.

        Args:
            x: ``(B, n)`` token ids; row ``b`` continues the document stream of row
                ``b`` in the previous call.
            knn_memories: from ``create_knn_memories(batch_size=B)``; searched, then
                written with the pairs leaving the XL window. None: memory off
                (memorizing layers attend locally only).
            xl_memories: the ``new_xl_memories`` of the previous call, or None.
            labels: ``(B, n)`` targets; ``-100`` and ``pad_id`` are ignored.
            add_knn_memory: write this segment's pairs to the kNN memories.

        Returns:
            ``(logits (B, n, num_tokens), new_xl_memories)``, or ``(loss, new_xl_memories)``
            when labels are given. ``new_xl_memories`` is a tuple with one ``XLCache``
            per XL layer, or None when the model has no XL layers.

        Raises:
            TypeError, ValueError: invalid inputs; no memory is changed then.
        """
        self.check_inputs(x, knn_memories, xl_memories, labels)
        state = StreamState(seq_len=x.shape[1], knn_memories=knn_memories,
                            xl_memories=tuple(xl_memories) if xl_memories else None)
        logits = self.extend(x, state, commit=True, add_knn_memory=add_knn_memory)
        if labels is None:
            return logits, state.xl_memories
        if self.config.pad_id is not None:
            labels = labels.masked_fill(labels == self.config.pad_id, IGNORE_INDEX)
        loss = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX)
        return loss, state.xl_memories

    def extend(self, x: Tensor, state: StreamState, *, commit: bool, add_knn_memory: bool = True) -> Tensor:
        """Runs tokens ``x (B, m)`` that continue the current segment (``state.pending`` holds its earlier part);
        returns their logits ``(B, m, num_tokens)``. See ``segment.StreamReader.extend``.

        With ``commit`` the segment is complete: each layer's XL cache rolls and the pairs that leave it go to
        the kNN memory (after the layer searched it); ``add_knn_memory=False`` reads without storing.
        """
        c = self.config
        knn_memories, xl_memories, pending = state.knn_memories, state.xl_memories, state.pending
        memories = dict(zip(c.memorizing_layers, knn_memories)) if knn_memories is not None else {}
        pasts = dict(zip(c.xl_memory_layers, xl_memories)) if xl_memories else {}
        if pending is None and not commit:
            assert x.shape[1] < state.seq_len
            pending = state.pending = self._start_segment(state.seq_len, pasts)
        start = 0 if pending is None else pending.tokens.length
        tokens = x if pending is None else pending.tokens.append(x)
        layout = self._document_layout(tokens)
        memory_ok = layout.doc[:, start:] == 0
        masks: dict[int, Tensor | FlexMask] = {}  # by XL length: every XL cache covers the same tokens
        h = self.token_emb(x)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else h.dtype
        new_xl = []
        for number, block in enumerate(self.layers, start=1):
            xl = pasts.get(number)
            P = 0 if xl is None else xl.keys.shape[2]
            if P not in masks:
                masks[P] = self._attention_mask(layout, xl, start, dtype=dtype)
            buffers = None if pending is None else pending.layer(number)
            past = None if xl is None or buffers is not None else (xl.keys, xl.values)
            memory_offset = None
            if number in memories and c.knn_gate == "mlp":
                # tokens from the newest memory to each query: the valid XL cache, then the segment so far
                in_cache = xl.valid.sum(dim=1, keepdim=True) if xl is not None else 0
                steps = torch.arange(start + 1, start + x.shape[1] + 1, device=x.device)
                memory_offset = in_cache + steps.expand(x.shape[0], -1)
            memory_bias = self.rel_pos.farthest if number in memories and c.memory_rel_pos_bias else None
            shifts, inputs = (None, None), None
            if block.shift is not None:  # the layer's inputs so far in the segment, and its cache's before it
                inputs = h if pending is None else pending.inputs[number - 1].append(h)
                shifts = block.shift(inputs, layout.doc, start, _inputs_before(xl))
            h, keys, values = block(h, *shifts, attn_mask=masks[P], past=past, buffers=buffers,
                                    memory=memories.get(number), memory_ok=memory_ok, memory_offset=memory_offset,
                                    memory_bias=memory_bias)
            if commit:  # keys, values: the XL cache's P pairs, then the whole segment's
                assert keys.shape[2] == P + tokens.shape[1]
                window = c.xl_max_memories if number in c.xl_memory_layers else 0
                new_cache = write_memory(memories.get(number), keys, values, layout.keep, layout.restart, past=xl,
                                         xl_window=window, add=add_knn_memory,
                                         inputs=inputs, keep_inputs=c.token_shift if block.shift is not None else 0)
                if new_cache is not None:
                    new_xl.append(new_cache)
        if commit:
            state.xl_memories = tuple(new_xl) if c.xl_memory_layers else None
            state.pending = None
        return self.to_logits(self.norm(h))

    def _start_segment(self, seq_len: int, pasts: dict[int, XLCache]) -> PendingSegment:
        """Empty buffers for a segment of ``seq_len`` tokens; each layer's key and value buffers start with
        its XL cache."""
        keys, values = [], []
        for number in range(1, self.config.depth + 1):
            xl = pasts.get(number)
            P = 0 if xl is None else xl.keys.shape[2]
            keys.append(PrefixBuffer(P + seq_len, dim=2))
            values.append(PrefixBuffer(P + seq_len, dim=2))
            if xl is not None:
                keys[-1].append(xl.keys)
                values[-1].append(xl.values)
        inputs = tuple(PrefixBuffer(seq_len, dim=1) if block.shift is not None else None for block in self.layers)
        return PendingSegment(PrefixBuffer(seq_len, dim=1), tuple(keys), tuple(values), inputs)

    # --------------------------------------------------------- generation
    def generate(self, prompt: Tensor, *, max_new_tokens: int, **options: Any) -> GenerationOutput:
        """Reads ``prompt`` into the memories, then samples ``max_new_tokens`` tokens: see ``generation.generate``."""
        return generate(self, prompt, max_new_tokens=max_new_tokens, **options)

    def _document_layout(self, x: Tensor) -> DocumentLayout:
        c = self.config
        return document_layout(x, sos_id=c.clear_memories_on_sos_token_id, eos_id=c.clear_memories_on_eos_token_id,
                               pad_id=c.pad_id)

    def _attention_mask(self, layout: DocumentLayout, past: XLCache | None, start: int = 0, *,
                        dtype: torch.dtype | None = None) -> Tensor | FlexMask:
        """The local mask (``masks.py``) of the segment's queries from ``start`` on: the relative position bias
        of the true distances, and where a query may not look (the future, another document, padding).

        An additive tensor ``(B, H, n - start, P + n)`` in ``dtype`` (default: the weights'), or with
        ``attention_kernel="flex"`` a ``FlexMask`` when there are at least ``masks.FLEX_MIN_QUERIES`` queries.
        """
        doc, key_ok = layout.doc, layout.key_ok
        n = doc.shape[1]
        P = 0 if past is None else past.keys.shape[2]
        valid = None if past is None else past.valid
        dtype = self.token_emb.weight.dtype if dtype is None else dtype
        if self.config.attention_kernel == "flex" and n - start >= local_masks.FLEX_MIN_QUERIES:
            return flex_mask(self.rel_pos.per_distance(P + n), doc, key_ok, valid, start, dtype)
        return dense_mask(self.rel_pos(n - start, P + n), doc, key_ok, valid, start, dtype)

    # -------------------------------------------------------- validation
    def check_inputs(
        self, x: Tensor, knn_memories: Sequence[KNNMemory] | None, xl_memories: Sequence[XLCache] | None,
        labels: Tensor | None,
    ) -> None:
        c = self.config
        check_tokens(x, labels, c.num_tokens)
        if knn_memories is not None:
            check_knn_memories(knn_memories, count=len(c.memorizing_layers), batch_size=x.shape[0], dim=c.dim_head,
                               heads=c.kv_heads)
        B = x.shape[0]
        if xl_memories is not None:
            if len(xl_memories) != len(c.xl_memory_layers):
                raise ValueError(f"expected {len(c.xl_memory_layers)} XL memories, got {len(xl_memories)}")
            for cache in xl_memories:
                if not isinstance(cache, XLCache):
                    raise TypeError(f"xl_memories must hold XLCache tuples, got {type(cache).__name__}")
                expected = (B, c.kv_heads, cache.keys.shape[2], c.dim_head)
                if (cache.keys.shape != expected or cache.values.shape != expected
                        or cache.valid.shape != (B, cache.keys.shape[2]) or cache.keys.shape[2] > c.xl_max_memories):
                    raise ValueError(
                        f"XL memories must have keys/values of shape (batch={B}, {c.kv_heads}, <= {c.xl_max_memories}, "
                        f"{c.dim_head}), got {tuple(cache.keys.shape)}"
                    )


def _inputs_before(cache: XLCache | None) -> tuple[Tensor, Tensor] | None:
    """A layer's inputs at the positions its XL cache ends with, and whether each is valid, or None."""
    if cache is None or cache.inputs is None or cache.inputs.shape[1] == 0:
        return None
    return cache.inputs, cache.valid[:, -cache.inputs.shape[1] :]


# -------------------------------------------------------------------------------------------- validation
def check_tokens(x: Tensor, labels: Tensor | None, num_tokens: int) -> None:
    """Validates a segment of token ids ``(B, n)`` and its labels (``IGNORE_INDEX`` allowed).

    Raises:
        TypeError, ValueError: what was expected, and what was given.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a tensor of token ids, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"x must hold integer token ids, got dtype {x.dtype}")
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must have shape (batch, seq_len) with seq_len >= 1, got {tuple(x.shape)}")
    # value checks read the tensor on the host: free on the CPU, a sync per call on an accelerator, where the
    # data was built on the host (and checked there) and an id out of range still fails in the embedding
    on_host = x.device.type == "cpu"
    if on_host and x.numel() and (int(x.min()) < 0 or int(x.max()) >= num_tokens):
        raise ValueError(f"token ids must be in [0, {num_tokens}), got values from {int(x.min())} to {int(x.max())}")
    if labels is not None:
        if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
            raise TypeError("labels must be an integer tensor")
        if labels.shape != x.shape:
            raise ValueError(f"labels must have the shape of x {tuple(x.shape)}, got {tuple(labels.shape)}")
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= num_tokens))
        if on_host and bad.any():
            raise ValueError(f"labels must be in [0, {num_tokens}) or {IGNORE_INDEX}, got {labels[bad][0].item()}")


def check_knn_memories(knn_memories: Sequence[KNNMemory], *, count: int, batch_size: int, dim: int, heads: int) -> None:
    """Validates the kNN memories given to ``forward``: one ``KNNMemory`` per memorizing layer, of this shape.

    Raises:
        TypeError, ValueError: what was expected, and what was given.
    """
    if len(knn_memories) != count:
        raise ValueError(f"expected {count} kNN memories (one per memorizing layer), got {len(knn_memories)}")
    for memory in knn_memories:
        if not isinstance(memory, KNNMemory):
            raise TypeError(f"knn_memories must hold KNNMemory objects, got {type(memory).__name__}")
        if memory.num_indices != batch_size:
            raise ValueError(
                f"the kNN memories were created for batch size {memory.num_indices}, but x has batch size {batch_size}")
        if memory.dim != dim or memory.heads != heads:
            raise ValueError(f"kNN memory must have dim={dim} and heads={heads}, got dim={memory.dim} and heads={memory.heads}")
