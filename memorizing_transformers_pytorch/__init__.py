"""Memorizing Transformers (Wu et al., ICLR 2022) in PyTorch."""

from .config import MemorizingTransformerConfig
from .memory import KNNMemory, KNNMemoryList
from .model import MemorizingTransformer, XLCache

__all__ = ["KNNMemory", "KNNMemoryList", "MemorizingTransformer", "MemorizingTransformerConfig", "XLCache"]
__version__ = "0.1.0"
