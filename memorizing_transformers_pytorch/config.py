"""Model configuration: a typed dataclass, validated once, that round-trips to JSON."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .masks import ATTENTION_KERNELS
from .search import INDEXES

__all__ = ["MemorizingTransformerConfig", "KNN_GATES", "read_json_object"]

KNN_GATES = ("sigmoid", "joint", "mlp")
# settings of the memory search: they change no weight, so a model may be evaluated or trained further with others
SEARCH_FIELDS = ("max_knn_memories", "num_retrieved_memories", "knn_index", "knn_ivf_lists", "knn_ivf_probe")


def _int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _layers(name: str, value: Any, depth: int) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        layers = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of layer numbers, got {value!r}") from None
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise TypeError(f"{name} must hold ints, got {layer!r}")
        if not 1 <= layer <= depth:
            raise ValueError(f"{name} must be layer numbers in 1..depth={depth}, got {layer}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"{name} must not repeat a layer, got {layers}")
    return tuple(sorted(layers))


class JsonConfig:
    """What a frozen config dataclass gets: a JSON round trip that names unknown keys, and ``same_model``.

    Subclasses name what they are (``description``, for errors) and their ``search_fields``: settings of the
    memory search, which change no weight.
    """

    description = "config"
    search_fields: tuple[str, ...] = ()

    def same_model(self, other: Any) -> bool:
        """Whether ``other`` describes the same parameters, up to the memory search's settings."""
        return dataclasses.replace(self, **{name: getattr(other, name) for name in self.search_fields}) == other

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """Raises ValueError for a key that is not a field."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise ValueError(f"unknown {cls.description} keys: {unknown}")
        # JSON has no tuples: the layer lists come back as lists
        return cls(**{name: tuple(value) if isinstance(value, list) else value for name, value in data.items()})

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, path: str | Path) -> Any:
        return cls.from_dict(read_json_object(path, cls.description))


@dataclass(frozen=True)
class MemorizingTransformerConfig(JsonConfig):
    """Every hyperparameter of a ``MemorizingTransformer``.

    Layers are numbered from 1 (the first block) to ``depth``, as in the seed.

    Args:
        num_tokens: vocabulary size.
        dim: model width.
        depth: number of blocks.
        heads: query heads per attention layer.
        dim_head: width of each head.
        kv_heads: key/value heads (1 = multi-query; must divide ``heads``).
        ff_mult: feed-forward hidden width as a multiple of ``dim``.
        attn_dropout, ff_dropout: dropout probabilities.
        memorizing_layers: layers with a kNN memory. ``None`` picks the layer three
            quarters up the stack (the paper's layer 9 of 12); ``()`` means none.
        max_knn_memories: kNN memory capacity per stream (FIFO beyond it).
        num_retrieved_memories: neighbours k retrieved per query.
        knn_gate: ``"sigmoid"``: separate softmaxes for local and memory attention,
            mixed by a learned per-head gate (the paper). ``"joint"``: one softmax
            over local and retrieved logits (the reference PyTorch code).
            ``"mlp"``: the joint softmax, with each retrieved memory's logit shifted
            by a small per-head MLP of its log-distance from the query (see
            ``Attention``), so how far back a memory is, and how many valid
            memories there are, set how much memory is used.
        knn_index: the memory's search (``KNNMemory``'s ``index``): ``"auto"`` (default), the fastest exact
            search (faiss's CPU kernels, torch on other devices); ``"exact"``: torch; ``"flat"``: faiss's exact
            kernels on CPU (1.2-3.8x faster than torch here); ``"ivf"``: approximate faiss IVF search on CPU for
            large memories; ``"bf16"``: for GPUs, candidates (8k) scored in bfloat16 with torch, then re-ranked
            exactly in float32 (recall@32 1.000 on random and clustered unit keys at 16K-64K, 0.9985 on
            near-duplicate ones; 3-9x slower than ``"exact"`` on our CPU; see docs/benchmarks.md); ``"fused"``: for
            GPUs with Triton, two stages (chunk maxima on tensor cores, then exact scores of the best chunks), each
            answer checked against a proven error bound (``search.FusedSearch``).
        knn_ivf_lists, knn_ivf_probe: IVF inverted lists per index, and lists scanned per query.
        attention_kernel: how local attention runs (``masks.py``): ``"sdpa"`` (default) with a dense additive
            mask built once per segment; ``"flex"``: a compiled ``flex_attention`` with the position bias as a
            score_mod and a block mask (no dense mask; no attention dropout; on CPU inference only, as torch's
            compiled flex attention has no backward there).
        knn_temperature_init: initial inverse temperature of the cosine-similarity
            logits in memorizing layers.
        xl_max_memories: tokens of Transformer-XL cache per layer (0 = no cache).
        xl_memory_layers: layers with an XL cache. ``None`` means every layer when
            ``xl_max_memories > 0``.
        clear_memories_on_sos_token_id: token that starts a document.
        clear_memories_on_eos_token_id: token that ends a document.
        pad_id: padding token: never attended to, never stored, ignored by the loss.
        rel_pos_num_buckets, rel_pos_max_distance: T5 relative position bias.
        previous_token_heads: how many heads start as "previous token" heads: head ``h`` (from 0) starts
            with its relative position bias at +10 for the token ``h + 1`` back and 0 elsewhere, so it
            attends almost only there (the bias stays learnable, and is shared by all layers). 0 (the
            default) starts every bias at random, as in the seed. Meant to hand a small model the tokens
            before each position, which a lookup by content matches. Measured once (dev/LOG.md): with 3
            such heads a width-128 model did *not* learn the copy warm-up in 6,000 steps (7.2 bits per
            copied byte, against 0.1 from a random start), so it is off by default.
        token_shift: ``N`` (0 = off): in memorizing layers, the keys also see the ``N`` positions before each
            token and the queries the ``N - 1`` before: the key projection reads ``x_t + A_1 x_{t-1} + ... +
            A_N x_{t-N}``, the query projection ``x_t + C_1 x_{t-1} + ... + C_{N-1} x_{t-N+1}``, where ``x`` is
            the layer's input and ``A_i``, ``C_i`` are learned ``dim x dim`` matrices (``token_shift.py``;
            ``(2N - 1) dim^2`` parameters per memorizing layer, whatever the vocabulary). A position of another
            document contributes nothing. With an XL cache (``xl_max_memories > 0``) the shift reaches back into
            the previous segment (the layer's cache keeps its last ``N`` inputs); without one it starts at the
            segment. A query for "these N positions" then matches the keys of the positions that followed them
            before, whose values hold them: the memorizing layer can copy by content on its own (an induction
            head over N positions of context), and what it copies locally it copies from memory too. With the
            memorizing layer first (``memorizing_layers=(1,)``) it is the demo's recipe (``N = 3``). Off by
            default (the seed's and the paper's model has none).
        memory_rel_pos_bias: with the ``joint`` or ``mlp`` gate, add to every retrieved memory's logit the
            relative position bias of the farthest bucket, the one T5's bucketing gives any key
            ``rel_pos_max_distance`` or more tokens back (every memory is that far back when
            ``xl_max_memories + 1 >= rel_pos_max_distance``). Off (the seed's behaviour), memories get no
            position bias while local keys do, so a local key's bias can outweigh a better-matching memory.
    """

    description = "model config"
    search_fields = (*SEARCH_FIELDS, "attention_kernel")  # the attention kernel changes no weight either

    num_tokens: int
    dim: int = 512
    depth: int = 8
    heads: int = 8
    dim_head: int = 64
    kv_heads: int = 1
    ff_mult: int = 4
    attn_dropout: float = 0.0
    ff_dropout: float = 0.0
    memorizing_layers: tuple[int, ...] | None = None
    max_knn_memories: int = 16384
    num_retrieved_memories: int = 32
    knn_gate: Literal["sigmoid", "joint", "mlp"] = "sigmoid"
    knn_index: Literal["auto", "exact", "flat", "ivf", "bf16", "fused"] = "auto"
    knn_ivf_lists: int = 256
    knn_ivf_probe: int = 16
    attention_kernel: Literal["sdpa", "flex"] = "sdpa"
    knn_temperature_init: float = 10.0
    xl_max_memories: int = 0
    xl_memory_layers: tuple[int, ...] | None = None
    clear_memories_on_sos_token_id: int | None = None
    clear_memories_on_eos_token_id: int | None = None
    pad_id: int | None = None
    rel_pos_num_buckets: int = 32
    rel_pos_max_distance: int = 128
    previous_token_heads: int = 0
    memory_rel_pos_bias: bool = False
    token_shift: int = 0

    def __post_init__(self) -> None:
        _int("num_tokens", self.num_tokens, minimum=1)
        for name in ("dim", "depth", "heads", "dim_head", "kv_heads", "ff_mult", "max_knn_memories",
                     "num_retrieved_memories", "rel_pos_num_buckets", "rel_pos_max_distance", "knn_ivf_lists",
                     "knn_ivf_probe"):
            _int(name, getattr(self, name), minimum=1)
        _int("xl_max_memories", self.xl_max_memories, minimum=0)
        _int("previous_token_heads", self.previous_token_heads, minimum=0)
        if self.previous_token_heads > min(self.heads, self.rel_pos_num_buckets // 2 - 1):
            raise ValueError(f"previous_token_heads must be at most heads ({self.heads}) and below half of "
                             f"rel_pos_num_buckets ({self.rel_pos_num_buckets}), got {self.previous_token_heads}")
        _int("token_shift", self.token_shift, minimum=0)
        if not isinstance(self.memory_rel_pos_bias, bool):
            raise ValueError(f"memory_rel_pos_bias must be true or false, got {self.memory_rel_pos_bias!r}")
        if self.memory_rel_pos_bias and self.knn_gate == "sigmoid":
            raise ValueError("memory_rel_pos_bias needs knn_gate 'joint' or 'mlp': with the sigmoid gate memories "
                             "have their own softmax, where one bias per head cancels out")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads must divide heads, got heads={self.heads}, kv_heads={self.kv_heads}")
        for name in ("attn_dropout", "ff_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
        if self.knn_gate not in KNN_GATES:
            raise ValueError(f"knn_gate must be one of {KNN_GATES}, got {self.knn_gate!r}")
        if self.knn_index not in INDEXES:
            raise ValueError(f"knn_index must be one of {INDEXES}, got {self.knn_index!r}")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise ValueError(f"attention_kernel must be one of {ATTENTION_KERNELS}, got {self.attention_kernel!r}")
        if self.attention_kernel == "flex" and self.attn_dropout:
            raise ValueError("attention_kernel 'flex' has no attention dropout: set attn_dropout=0 or use 'sdpa'")
        if not isinstance(self.knn_temperature_init, (int, float)) or self.knn_temperature_init <= 0:
            raise ValueError(f"knn_temperature_init must be a positive number, got {self.knn_temperature_init!r}")
        if self.num_retrieved_memories > self.max_knn_memories:
            raise ValueError(
                f"num_retrieved_memories ({self.num_retrieved_memories}) must not exceed "
                f"max_knn_memories ({self.max_knn_memories})"
            )
        memorizing = (max(1, (3 * self.depth) // 4),) if self.memorizing_layers is None else self.memorizing_layers
        object.__setattr__(self, "memorizing_layers", _layers("memorizing_layers", memorizing, self.depth))
        if self.xl_memory_layers is None:
            xl_layers: Any = range(1, self.depth + 1) if self.xl_max_memories > 0 else ()
        else:
            xl_layers = self.xl_memory_layers
        xl_layers = _layers("xl_memory_layers", xl_layers, self.depth)
        if xl_layers and self.xl_max_memories == 0:
            raise ValueError("xl_memory_layers were given but xl_max_memories is 0")
        object.__setattr__(self, "xl_memory_layers", xl_layers)
        for name in ("clear_memories_on_sos_token_id", "clear_memories_on_eos_token_id", "pad_id"):
            value = getattr(self, name)
            if value is not None:
                _int(name, value, minimum=0)
                if value >= self.num_tokens:
                    raise ValueError(f"{name} must be a token id below num_tokens={self.num_tokens}, got {value}")


def read_json_object(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON file holding an object, with errors that name the file.

    Raises:
        FileNotFoundError: no such file. ValueError: not JSON, or not an object.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what} file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what} file {path} must hold a JSON object")
    return data
