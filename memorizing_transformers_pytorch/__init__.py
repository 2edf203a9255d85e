"""Memorizing Transformers (Wu et al., ICLR 2022) in PyTorch."""

from .attention import XLCache, memory_attention, write_memory
from .config import MemorizingTransformerConfig
from .configs import get_config
from .memory import KNNMemory, KNNMemoryList
from .model import MemorizingTransformer

__all__ = ["KNNMemory", "KNNMemoryList", "MemorizingTransformer", "MemorizingTransformerConfig", "XLCache",
           "get_config", "memory_attention", "write_memory"]
__version__ = "0.1.0"
