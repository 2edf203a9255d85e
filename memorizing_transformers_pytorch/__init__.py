"""Memorizing Transformers (Wu et al., ICLR 2022) in PyTorch."""

from .config import MemorizingTransformerConfig
from .configs import get_config
from .knn_attention import memory_attention
from .memory import KNNMemory, KNNMemoryList
from .model import MemorizingTransformer
from .segment import StreamState
from .xl_cache import XLCache, write_memory

# the data sources of higher layers register themselves: --data copy, --data longbench
from . import copy_warmup as _copy_warmup  # noqa: E402,F401  isort: skip
from .longbench import tasks as _longbench_tasks  # noqa: E402,F401  isort: skip

__all__ = ["KNNMemory", "KNNMemoryList", "MemorizingTransformer", "MemorizingTransformerConfig", "StreamState",
           "XLCache", "get_config", "memory_attention", "write_memory"]
__version__ = "0.1.0"
