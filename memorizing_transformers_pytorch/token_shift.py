"""Token shift: a memorizing layer's keys see the ``N`` positions before each token, its queries the ``N - 1``
before, through a learned linear mix of the layer's own inputs at those positions.

For a layer input ``x`` (the residual stream before the layer's normalisation)::

    key input   = x_t + A_1 x_{t-1} + ... + A_N x_{t-N}
    query input = x_t + C_1 x_{t-1} + ... + C_{N-1} x_{t-N+1}

with one ``dim x dim`` matrix per offset, so the parameters are ``(2N - 1) dim^2`` per memorizing layer,
whatever the vocabulary. A position of another document contributes nothing. Across segments, a layer's XL
cache keeps its last ``N`` inputs (``XLCache.inputs``), so a segment's first tokens see the same context as
any other; without an XL cache the shift starts at the segment.

A query for "these N positions" then matches the keys of the positions that followed them before, whose values
hold them: the layer can copy by content on its own (an induction head over N positions of context), and what it
copies locally it copies from memory too. With the memorizing layer first, its inputs are the token embeddings,
and each ``A_i`` can map them to any table of per-token vectors (when ``dim`` covers the vocabulary, as at byte
level): the earlier version, one embedding table per offset, grew with the vocabulary
(``(2N - 1) x num_tokens x dim``, 500M parameters at a 32K vocabulary and width 1,024 with ``N = 8``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TokenShift"]


class TokenShift(nn.Module):
    """The per-offset mixes of one memorizing layer: ``keys[i - 1]`` is ``A_i``, ``queries[i - 1]`` is ``C_i``."""

    def __init__(self, dim: int, count: int) -> None:
        super().__init__()
        self.count = count
        self.keys = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(count))
        self.queries = nn.ModuleList(nn.Linear(dim, dim, bias=False) for _ in range(count - 1))
        for linear in (*self.keys, *self.queries):
            nn.init.normal_(linear.weight, std=dim**-0.5)

    def forward(self, inputs: Tensor, doc: Tensor, start: int, before: tuple[Tensor, Tensor] | None = None
                ) -> tuple[Tensor, Tensor | None]:
        """The key and query shifts ``(B, m, dim)`` of positions ``start ..`` of the segment read so far.

        Args:
            inputs: ``(B, start + m, dim)`` the layer's inputs at the segment's positions so far.
            doc: ``(B, start + m)`` document numbers in the segment (0 continues the previous segment's document).
            start: the first position to shift (the earlier ones were read before: generation).
            before: the layer's inputs at the positions just before the segment ``(B, K, dim)``, and whether each
                belongs to the segment's first document ``(B, K)`` (from the XL cache), or None.

        Returns:
            The key shift, and the query shift (None for ``N = 1``).
        """
        count = self.count
        B, n, dim = inputs.shape
        # the N positions before the segment: zeros and "no document" (-1) where nothing is known
        past = inputs.new_zeros(B, count, dim)
        past_doc = doc.new_full((B, count), -1)
        if before is not None and before[0].shape[1] > 0:
            held, held_ok = before[0][:, -count:], before[1][:, -count:]
            past[:, count - held.shape[1] :] = held.to(inputs.dtype)
            past_doc[:, count - held.shape[1] :] = torch.where(held_ok, 0, -1)
        inputs, doc = torch.cat((past, inputs), dim=1), torch.cat((past_doc, doc), dim=1)
        n += count
        here = doc[:, count + start :]

        def mix(linears: nn.ModuleList) -> Tensor | None:
            total = None
            for back, linear in enumerate(linears, start=1):
                previous = inputs[:, count + start - back : n - back]
                same_document = (doc[:, count + start - back : n - back] == here).unsqueeze(-1)
                shifted = linear(previous * same_document)  # no bias: another document's position adds 0
                total = shifted if total is None else total + shifted
            return total

        keys = mix(self.keys)
        assert keys is not None
        return keys, mix(self.queries)
