"""Evaluation: bits per byte on held-out documents, with memory on, off, and at several sizes.

Each document is read in order through the same segmenting as training. Bits per
byte count every byte of every document (the start-of-document marker is not a
byte of the document and is not scored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import distributed
from .data import IGNORE_INDEX, SOS_ID, DocumentStream
from .model import MemorizingTransformer

__all__ = ["bits_per_byte", "evaluate", "select_documents", "format_table", "plot"]


def select_documents(documents: Sequence[np.ndarray], *, max_docs: int | None, max_doc_bytes: int | None
                     ) -> list[np.ndarray]:
    """The ``max_docs`` longest documents (memory matters most there), each cut to ``max_doc_bytes``."""
    chosen = sorted(documents, key=len, reverse=True)[:max_docs] if max_docs else list(documents)
    return [d[:max_doc_bytes] if max_doc_bytes else d for d in chosen]


@torch.no_grad()
def bits_per_byte(
    model: MemorizingTransformer,
    documents: Sequence[np.ndarray],
    *,
    memory_size: int | None,
    batch_size: int = 2,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "eval",
) -> float:
    """Bits per byte over ``documents``.

    Args:
        memory_size: kNN memory capacity per stream; ``0`` turns the memory off;
            ``None`` uses the model's configured size.

    Under ``torchrun`` each rank reads every ``world_size``-th document and the
    sums are reduced across ranks, so every rank returns the same total (every rank
    must call it). Where a document starts within a segment changes its loss a
    little, so totals are comparable only at the same world size and batch size.
    """
    model.eval()
    documents = list(documents)[distributed.rank() :: distributed.world_size()]
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    if not documents:  # more ranks than documents: this rank has nothing to read
        return _reduced_ratio(0.0, 0, device)
    stream = DocumentStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=False)
    knn = model.create_knn_memories(batch_size=batch_size, max_memories=memory_size) if use_memory else None
    xl = None
    total_bits, total_bytes = 0.0, 0
    total = sum(len(d) + 1 for d in documents)
    bar = tqdm(total=total, disable=not progress, unit="B", unit_scale=True, desc=description, leave=False)
    for batch in stream:
        labels = batch.labels.masked_fill(batch.labels == SOS_ID, IGNORE_INDEX).to(device)
        logits, xl = model(batch.tokens.to(device), knn_memories=knn, xl_memories=xl)
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="sum")
        total_bits += nll.item() / math.log(2)
        total_bytes += int((labels != IGNORE_INDEX).sum())
        bar.update(int((batch.tokens != 0).sum()))
    bar.close()
    return _reduced_ratio(total_bits, total_bytes, device)


def _reduced_ratio(bits: float, count: int, device: str | torch.device) -> float:
    bits, count = distributed.sum_values([bits, float(count)], device)
    return bits / max(1.0, count)


def evaluate(
    model: MemorizingTransformer,
    documents: Sequence[np.ndarray],
    *,
    memory_sizes: Sequence[int] = (0, 1024, 4096, 16384, 65536),
    baseline: MemorizingTransformer | None = None,
    batch_size: int = 2,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """The full table: with memory (trained size), without memory, the baseline, and by memory size."""

    def run(m: MemorizingTransformer, size: int | None, name: str) -> float:
        return bits_per_byte(m, documents, memory_size=size, batch_size=batch_size, seq_len=seq_len,
                             device=device, progress=progress and distributed.is_main(), description=name)

    trained_size = model.config.max_knn_memories
    by_size = {str(size): run(model, size, f"memory {size}") for size in memory_sizes}
    with_memory = by_size.get(str(trained_size))
    if with_memory is None:
        with_memory = run(model, None, f"memory {trained_size}")
    without_memory = by_size["0"] if "0" in by_size else run(model, 0, "memory off")
    result: dict[str, Any] = {
        "bits_per_byte": {"with_memory": with_memory, "without_memory": without_memory},
        "by_memory_size": by_size,
        "trained_memory_size": trained_size,
        "documents": len(documents),
        "bytes": int(sum(len(d) for d in documents)),
        "seq_len": seq_len,
        "batch_size": batch_size,
    }
    if baseline is not None:
        result["bits_per_byte"]["baseline"] = run(baseline, 0, "baseline")
    on, off = with_memory, without_memory
    result["memory_gain_percent"] = 100.0 * (off - on) / off
    if baseline is not None:
        result["gain_over_baseline_percent"] = 100.0 * (result["bits_per_byte"]["baseline"] - on) / result[
            "bits_per_byte"]["baseline"]
    return result


def format_table(result: dict[str, Any]) -> str:
    lines = ["| setting | bits per byte |", "|---|---|"]
    bpb = result["bits_per_byte"]
    lines.append(f"| with memory ({result['trained_memory_size']}) | {bpb['with_memory']:.4f} |")
    lines.append(f"| memory off (same weights) | {bpb['without_memory']:.4f} |")
    if "baseline" in bpb:
        lines.append(f"| baseline (no memorizing layer) | {bpb['baseline']:.4f} |")
    for size, value in result["by_memory_size"].items():
        lines.append(f"| memory size {size} | {value:.4f} |")
    lines.append("")
    lines.append(f"memory on vs off: {result['memory_gain_percent']:+.2f}% bits per byte"
                 + (f"; vs baseline: {result['gain_over_baseline_percent']:+.2f}%"
                    if "gain_over_baseline_percent" in result else ""))
    lines.append(f"({result['documents']} documents, {result['bytes']} bytes)")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bits per byte against memory size (log scale), with the baseline as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [int(s) for s in result["by_memory_size"]]
    values = list(result["by_memory_size"].values())
    positions = list(range(len(sizes)))  # evenly spaced: sizes grow roughly geometrically
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, values, marker="o", label="memorizing model")
    if "baseline" in result["bits_per_byte"]:
        ax.axhline(result["bits_per_byte"]["baseline"], color="gray", linestyle="--", label="baseline (XL only)")
    ax.set_xticks(positions)
    ax.set_xticklabels(["off" if s == 0 else f"{s // 1024}K" if s >= 1024 else str(s) for s in sizes])
    ax.set_xlabel("kNN memory size per stream (tokens)")
    ax.set_ylabel("bits per byte (held-out)")
    ax.set_title("Held-out bits per byte vs memory size")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def save(result: dict[str, Any], output_dir: str | Path) -> tuple[Path, Path]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "eval.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    return json_path, plot(result, output_dir / "eval.png")


@torch.no_grad()
def token_log_probs(model: MemorizingTransformer, tokens: np.ndarray, *, memory_size: int | None, seq_len: int = 512,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``log p(tokens[t] | tokens[:t])`` for ``t >= 1``, reading one stream segment by segment, and the argmax
    there (what greedy decoding would write after ``tokens[:t]``)."""
    model.eval()
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    knn = model.create_knn_memories(batch_size=1, max_memories=memory_size) if use_memory else None
    xl = None
    stream = torch.as_tensor(tokens, dtype=torch.long, device=device).unsqueeze(0)
    logps, argmaxes = [], []
    for start in range(0, stream.shape[1] - 1, seq_len):
        x = stream[:, start : start + seq_len]
        target = stream[:, start + 1 : start + seq_len + 1]
        logits, xl = model(x, knn_memories=knn, xl_memories=xl)
        logp = torch.log_softmax(logits[:, : target.shape[1]].float(), dim=-1)
        logps.append(logp.gather(-1, target.unsqueeze(-1))[0, :, 0].cpu())
        argmaxes.append(logp.argmax(-1)[0].cpu())
    return torch.cat(logps).numpy(), torch.cat(argmaxes).numpy()


MIN_NAME_LENGTH = 6


def name_mentions(text: bytes, name: bytes) -> list[int]:
    """Offsets of every whole-word occurrence of ``name`` in ``text`` (``self.name`` included)."""
    import re

    return [m.start() for m in re.finditer(rb"(?<!\w)" + re.escape(name) + rb"(?!\w)", text)]


def find_long_range_names(text: bytes, *, min_distance: int, min_length: int = MIN_NAME_LENGTH) -> list[tuple[str, int]]:
    """``(name, offset)`` of uses of names defined by ``def``/``class`` whose previous mention is
    at least ``min_distance`` bytes back (so it is outside the local and XL window). Every whole-word
    occurrence counts as a mention, attribute accesses such as ``self.name`` included."""
    import re

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
    from .data import SOS_ID

    if not 0 <= prefix < MIN_NAME_LENGTH:
        raise ValueError(f"names: prefix must be in 0..{MIN_NAME_LENGTH - 1} (names have >= {MIN_NAME_LENGTH} bytes), got {prefix}")
    records: list[dict[str, Any]] = []
    for index, document in enumerate(tqdm(documents, disable=not progress, desc="documents", leave=False)):
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
