"""The Transformer-XL cache, and what happens to a layer's pairs when a segment is complete.

``write_memory`` is the one place pairs move: after a layer has read a segment, its XL cache rolls forward
and the pairs that leave the XL window go to the layer's kNN memory, so nothing is dropped or stored twice.
It takes plain tensors plus a memory, so any attention layer (ours, or a Hugging Face model's) can call it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .memory import KNNMemory

__all__ = ["XLCache", "write_memory"]


class XLCache(NamedTuple):
    """Transformer-XL cache of one layer: the (key, value) pairs of the latest tokens.

    keys, values: ``(B, Hkv, P, Dh)``; valid: ``(B, P)`` bool, False for padding
    and for tokens of a document that has since ended in that row.
    inputs: ``(B, K, dim)`` the layer's inputs at its last ``K <= token_shift`` positions, so that the token
    shift (``token_shift.py``) reaches back into the previous segment; None without a shift.
    """

    keys: Tensor
    values: Tensor
    valid: Tensor
    inputs: Tensor | None = None


def write_memory(memory: KNNMemory | None, keys: Tensor, values: Tensor, valid: Tensor, restart: Tensor, *,
                 past: XLCache | None, xl_window: int, add: bool = True, inputs: Tensor | None = None,
                 keep_inputs: int = 0) -> XLCache | None:
    """After a layer has read: roll its XL cache, clear finished documents' memories, and store in ``memory``
    the pairs that leave the XL window.

    Args:
        memory: the layer's kNN memory, or None (memory off).
        keys, values: ``(B, Hkv, P + n, Dh)`` the pairs the layer attended to: the ``P`` of its XL cache
            ``past`` (none without one), then the segment's ``n``, as ``Attention`` returns them (so the cache
            is concatenated once per segment, by the layer).
        valid: ``(B, n)`` bool, the segment's pairs that may be kept (the row's last document, not padding).
        restart: ``(B,)`` bool, rows whose earlier memories belong to a finished document.
        past: the XL cache the layer read, or None.
        xl_window: tokens of XL cache to keep (0: every pair goes to the kNN memory).
        add: False reads without storing (memory clears still happen).
        inputs, keep_inputs: ``(B, n, dim)`` the layer's inputs at the segment's positions, of which the new cache
            keeps those of its last ``keep_inputs`` positions (the token shift's context), or None.

    Returns:
        The new XL cache, or None when ``xl_window == 0``.
    """
    keys, values = keys.detach(), values.detach()
    if past is not None:
        assert keys.shape[2] == past.valid.shape[1] + valid.shape[1], "keys must hold the XL cache's pairs first"
        valid = torch.cat((past.valid & ~restart[:, None], valid), dim=1)
    leaving = max(0, keys.shape[2] - xl_window)
    if memory is not None:
        memory.clear_rows(restart)
        if add and leaving > 0:
            pairs = torch.stack((keys[:, :, :leaving], values[:, :, :leaving]), dim=-2)  # (B, Hkv, leaving, 2, Dh)
            memory.store(pairs, valid[:, :leaving])
    if xl_window == 0:
        return None
    cache = XLCache(keys[:, :, leaving:], values[:, :, leaving:], valid[:, leaving:])
    if inputs is None or keep_inputs == 0:
        return cache
    kept = min(keep_inputs, cache.valid.shape[1])
    before = past.inputs if past is not None and past.inputs is not None else inputs[:, :0]
    held = torch.cat((before.to(inputs.dtype), inputs.detach()), dim=1)[:, -kept:] if kept else inputs[:, :0]
    if held.shape[1] < kept:  # fewer positions read than the cache holds: nothing known before them
        held = torch.cat((held.new_zeros(held.shape[0], kept - held.shape[1], held.shape[2]), held), dim=1)
    return cache._replace(inputs=held.detach())
