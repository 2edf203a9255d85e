"""Relative positions: T5's bucketed, learned per-head bias, shared by all layers of ``MemorizingTransformer``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["relative_position_bucket", "RelativePositionBias"]


def relative_position_bucket(distance: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5's causal bucketing: exact buckets for small distances, log-spaced up to ``max_distance``.

    Args:
        distance: integer tensor, query position minus key position (negative: future, bucket 0).
    """
    distance = distance.clamp(min=0)
    exact = num_buckets // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / exact) / math.log(max_distance / exact)
    large = exact + (log_ratio * (num_buckets - exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return torch.where(distance < exact, distance, large)


class RelativePositionBias(nn.Module):
    """A learned per-head bias for each distance bucket, shared by all layers."""

    def __init__(self, *, heads: int, num_buckets: int, max_distance: int) -> None:
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, heads)

    @torch.no_grad()
    def focus_on_previous_tokens(self, count: int, strength: float = 10.0) -> None:
        """Head ``h < count``: bias ``strength`` at distance ``h + 1``, 0 at every other distance.

        Distances below ``num_buckets // 2`` have a bucket each, so the bias picks exactly that token.
        """
        for head in range(count):
            self.embedding.weight[:, head] = 0.0
            self.embedding.weight[head + 1, head] = strength

    @property
    def farthest(self) -> Tensor:
        """``(H,)`` the bias of the last bucket: every key ``max_distance`` or more tokens back."""
        return self.embedding.weight[-1]

    def per_distance(self, count: int) -> Tensor:
        """``(H, count)``: the bias at distances ``0 .. count - 1`` from a query back to a key."""
        distances = torch.arange(count, device=self.embedding.weight.device)
        return self.embedding(relative_position_bucket(distances, self.num_buckets, self.max_distance)).t()

    def forward(self, num_queries: int, num_keys: int) -> Tensor:
        """Returns ``(H, num_queries, num_keys)`` for keys at positions ``0 .. num_keys - 1`` and queries at
        the last ``num_queries`` of them.

        The bias depends only on the distance, so it is looked up once per distance and laid out with
        ``unfold`` (row ``i`` is a window of the per-distance vector). Its backward sums each distance's
        gradient along a diagonal, which is several times cheaper on CPU than an embedding backward over
        every (query, key) pair.
        """
        first_query = num_keys - num_queries
        device = self.embedding.weight.device
        # distances from the largest (last query, first key) down to the smallest (first query, last key)
        distances = torch.arange(num_keys - 1, first_query - num_keys, -1, device=device)
        per_distance = self.embedding(relative_position_bucket(distances, self.num_buckets, self.max_distance)).t()
        # window s covers distances num_keys - 1 - s downwards: it is the row of query num_queries - 1 - s
        return per_distance.unfold(1, num_keys, 1).flip(1)


