"""The names metric: does the model recall a name last seen far back (outside its local + XL window)?

For every use of a ``def``/``class`` name whose previous mention is at least ``min_distance`` bytes back,
given the text before it and the name's first bytes, it scores the rest of the name teacher-forced, with the
memory on and off.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from memorizing_transformers_pytorch.data import SOS_ID
from memorizing_transformers_pytorch.evaluate import token_log_probs
from memorizing_transformers_pytorch.model import MemorizingTransformer

__all__ = ["name_mentions", "find_long_range_names", "name_recall", "MIN_NAME_LENGTH"]

MIN_NAME_LENGTH = 6


def name_mentions(text: bytes, name: bytes) -> list[int]:
    """Offsets of every whole-word occurrence of ``name`` in ``text`` (``self.name`` included)."""
    return [m.start() for m in re.finditer(rb"(?<!\w)" + re.escape(name) + rb"(?!\w)", text)]


def find_long_range_names(text: bytes, *, min_distance: int, min_length: int = MIN_NAME_LENGTH) -> list[tuple[str, int]]:
    """``(name, offset)`` of uses of names defined by ``def``/``class`` whose previous mention is
    at least ``min_distance`` bytes back (so it is outside the local and XL window). Every whole-word
    occurrence counts as a mention, attribute accesses such as ``self.name`` included."""
    names = {m.group(1) for m in re.finditer(rb"(?:def|class)\s+([A-Za-z_]\w+)", text) if len(m.group(1)) >= min_length}
    cases = []
    for name in names:
        offsets = name_mentions(text, name)
        first_definition = text.find(b"def " + name) if b"def " + name in text else text.find(b"class " + name)
        for previous, offset in zip(offsets, offsets[1:]):
            if offset - previous >= min_distance and previous >= first_definition >= 0:
                cases.append((name.decode(), offset))
    return sorted(cases, key=lambda case: case[1])


def name_recall(model: MemorizingTransformer, documents: Sequence[np.ndarray], *, memory_sizes: Sequence[int],
                min_distance: int = 4096, prefix: int = 2, seq_len: int = 512, device: str | torch.device = "cpu",
                progress: bool = True) -> dict[str, Any]:
    """How well the model recalls a name last seen ``>= min_distance`` bytes back.

    For each such use, given the text before it and the name's first ``prefix`` bytes, teacher-forced, at each
    memory size (0 = memory off):

    - ``log_prob``: the log-probability of the rest of the name;
    - ``predicted``: the argmax at each byte of the rest (given the true bytes before it);
    - ``greedy``: whether that is the rest of the name, i.e. whether greedy decoding from there writes it.

    The summary per memory size gives their means, the bits per byte over all names' rest bytes, and, against
    memory off, the fraction of cases where the name became more likely. ``cases_detail`` lists every case.
    """
    if not 0 <= prefix < MIN_NAME_LENGTH:
        raise ValueError(f"names: prefix must be in 0..{MIN_NAME_LENGTH - 1} (names have >= {MIN_NAME_LENGTH} bytes), got {prefix}")
    records: list[dict[str, Any]] = []
    for index, document in enumerate(tqdm(documents, disable=None if progress else True, desc="documents", leave=False)):
        cases = find_long_range_names(document.tobytes(), min_distance=min_distance)
        if not cases:
            continue
        stream = np.concatenate(([SOS_ID], document)).astype(np.int64)
        rows = [{"document": index, "name": name, "offset": offset, "log_prob": {}, "predicted": {}, "greedy": {}}
                for name, offset in cases]
        for size in memory_sizes:
            logp, argmax = token_log_probs(model, stream, memory_size=size, seq_len=seq_len, device=device)
            for row in rows:
                # byte i of the document is stream position i + 1, predicted by logp[i]
                span = slice(row["offset"] + prefix, row["offset"] + len(row["name"]))
                row["log_prob"][str(size)] = float(logp[span].sum())
                predicted = bytes(argmax[span].astype(np.uint8).tolist()).decode("latin-1")
                row["predicted"][str(size)] = predicted
                row["greedy"][str(size)] = predicted == row["name"][prefix:]
        records.extend(rows)
    summary: dict[str, Any] = {"cases": len(records), "min_distance": min_distance, "prefix_bytes": prefix,
                               "by_memory_size": {}}
    rest_bytes = sum(len(r["name"]) - prefix for r in records)
    for size in map(str, memory_sizes):
        logp = np.array([r["log_prob"][size] for r in records])
        greedy = np.array([r["greedy"][size] for r in records])
        summary["by_memory_size"][size] = {
            "mean_log2_prob": float(logp.mean() / math.log(2)) if records else float("nan"),
            "bits_per_byte": float(-logp.sum() / math.log(2) / rest_bytes) if rest_bytes else float("nan"),
            "mean_prob": float(np.exp(logp).mean()) if records else float("nan"),
            "exact_recall_at_0.5": float((np.exp(logp) > 0.5).mean()) if records else float("nan"),
            "greedy_writes_name": float(greedy.mean()) if records else float("nan"),
        }
        if 0 in memory_sizes and size != "0" and records:
            off = np.array([r["log_prob"]["0"] for r in records])
            summary["by_memory_size"][size]["fraction_better_than_off"] = float((logp > off).mean())
    summary["cases_detail"] = records
    return summary
