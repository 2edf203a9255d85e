"""Named, complete model configs: ``get_config("demo")``, or ``--preset demo`` on the command line.

    tiny        a few thousand parameters, for tests.
    demo        the small byte-level model of the demo and the benchmarks (4 layers, width 256).
    small       the width-128, 2-layer byte-level model of the CPU recall and names experiments.
    paper_base  the paper's base model (Wu et al. 2022, section 4): 12 layers, width 1024, 8 heads of 128,
                FFN 4096, the memory in layer 9, k = 32, a 512-token XL cache and a 65K memory, for a
                32K-token vocabulary. Its token ids (padding 0, document start 1) are placeholders for a
                tokenizer's own.

Trained with a tokenizer (``--tokenizer``, or the tokenizer of ``--data shards:DIR``), a config takes its
``num_tokens``, ``pad_id`` and ``clear_memories_on_sos_token_id`` from the tokenizer: ``--preset paper_base
--tokenizer tok.json`` is the paper's model for that vocabulary. Other flags override single fields.
"""

from __future__ import annotations

from typing import Any

from .config import MemorizingTransformerConfig

__all__ = ["CONFIGS", "get_config"]

_BYTES = dict(num_tokens=256, pad_id=0, clear_memories_on_sos_token_id=2)  # data.PAD_ID, data.SOS_ID

# the fields each config sets (the rest keep their defaults); fields left open, such as the XL layers, are
# derived when the config is built, so overrides like xl_max_memories=0 stay consistent
CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        num_tokens=32, dim=32, depth=3, heads=4, dim_head=8, memorizing_layers=(2,), max_knn_memories=64,
        num_retrieved_memories=4),
    "demo": dict(
        **_BYTES, dim=256, depth=4, heads=4, dim_head=64, memorizing_layers=(3,), max_knn_memories=16384,
        num_retrieved_memories=32, xl_max_memories=512),
    "small": dict(
        **_BYTES, dim=128, depth=2, heads=4, dim_head=32, memorizing_layers=(2,), max_knn_memories=16384,
        num_retrieved_memories=32, xl_max_memories=512),
    "paper_base": dict(
        num_tokens=32000, dim=1024, depth=12, heads=8, dim_head=128, kv_heads=8, ff_mult=4, memorizing_layers=(9,),
        max_knn_memories=65536, num_retrieved_memories=32, xl_max_memories=512, pad_id=0,
        clear_memories_on_sos_token_id=1),
}


def get_config(name: str, **overrides: Any) -> MemorizingTransformerConfig:
    """The config called ``name``, with single fields replaced by ``overrides``.

    Raises:
        ValueError: an unknown name, or overrides that make an invalid config.
        TypeError: an unknown field.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}")
    return MemorizingTransformerConfig(**{**CONFIGS[name], **overrides})
