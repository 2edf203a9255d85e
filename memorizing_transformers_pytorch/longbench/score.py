"""Scoring a model's answer against the expected items.

One expected item (passkey, the single / multi-key needles, key-value retrieval): **exact match** of the first
item the model writes. Leading spaces, quotes and punctuation are skipped; the item must then be followed by
the end of the answer or by a character that cannot continue it (not a letter, digit, ``-`` or ``_``):
"7466763." and " 7466763, ..." are right, "74667631" and "1234, 7466763" are wrong.

Several expected items (multi-value, multi-query, variable tracking, common words): **recall**, the fraction of
them that occur anywhere in the answer as whole items (case-insensitive), so a list in any order scores 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["score", "contains_item"]

_WORD = r"[A-Za-z0-9_-]"
_LEADING = " \t\n\"'`*:([{<,;"


def contains_item(text: str, item: str) -> bool:
    """Whether ``item`` occurs in ``text`` as a whole item (not inside a longer word or number)."""
    return re.search(rf"(?<!{_WORD}){re.escape(item)}(?!{_WORD})", text, flags=re.IGNORECASE) is not None


def score(expected: Sequence[str], answer: str) -> float:
    """1.0 / 0.0 for one expected item (exact match of the first item), else the recall of the items."""
    if not expected:
        raise ValueError("score: no expected items")
    if len(expected) == 1:
        rest = answer.lstrip(_LEADING)
        return float(re.match(rf"{re.escape(expected[0])}(?!{_WORD})", rest, flags=re.IGNORECASE) is not None)
    return sum(contains_item(answer, item) for item in expected) / len(expected)
