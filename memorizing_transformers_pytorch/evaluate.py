"""Evaluation: bits per byte and token perplexity on held-out documents, with memory on, off, and at several sizes.

``read_stream`` is the one loop that reads segments with memories carried across them; evaluation here and
the experiments' probes all go through it. Each document is read in order through the same segmenting as
training. Every token of every document is scored once (the start-of-document marker is not part of the
document and is not scored). Bits per byte divide the total loss in bits by the bytes of text the scored
tokens stand for (``Tokenizer.token_bytes``; one per token for a byte-level model), so byte-level and
token-level models compare; perplexity is ``exp`` of the mean loss per token.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from . import distributed
from .data import IGNORE_INDEX, Batch, DocumentStream
from .model import MemorizingTransformer
from .run_folder import finite_json
from .tokenizer import BYTES, Tokenizer

__all__ = ["read_stream", "segments", "token_log_probs", "Score", "score", "bits_per_byte", "evaluate",
           "select_documents", "document_bytes", "format_table", "describe_gain", "save_json"]


def segments(stream: Tensor, seq_len: int) -> Iterator[Batch]:
    """Token rows ``(B, S)`` cut into consecutive segments of ``seq_len`` with their next-token labels
    (``IGNORE_INDEX`` past the end of the rows; the last segment may be shorter)."""
    for start in range(0, stream.shape[1] - 1, seq_len):
        tokens = stream[:, start : start + seq_len]
        labels = torch.full_like(tokens, IGNORE_INDEX)
        targets = stream[:, start + 1 : start + seq_len + 1]
        labels[:, : targets.shape[1]] = targets
        yield Batch(tokens, labels)


@torch.no_grad()
def read_stream(model: MemorizingTransformer, batches: Iterable[Batch], *, memory_size: int | None,
                device: str | torch.device = "cpu") -> Iterator[tuple[Batch, Tensor]]:
    """Reads batches in order, each row continuing its stream, with fresh kNN and XL memories carried across
    segments; yields each batch (moved to ``device``) with its logits ``(B, n, num_tokens)``. The model is in
    eval mode while it reads, and back in its own mode when the loop ends (or is left).

    Args:
        memory_size: kNN memory capacity per stream; ``0`` turns the memory off; ``None`` uses the model's size.
    """
    was_training = model.training
    model.eval()
    use_memory = memory_size != 0 and len(model.config.memorizing_layers) > 0
    knn, xl = None, None
    try:
        for batch in batches:
            batch = Batch(batch.tokens.to(device), batch.labels.to(device), batch.new_streams)
            if knn is None and use_memory:
                knn = model.create_knn_memories(batch_size=batch.tokens.shape[0], max_memories=memory_size)
            if batch.new_streams:
                xl = None
                if knn is not None:
                    knn.clear_memory()
            logits, xl = model(batch.tokens, knn_memories=knn, xl_memories=xl)
            yield batch, logits
    finally:
        model.train(was_training)


@torch.no_grad()
def token_log_probs(model: MemorizingTransformer, tokens: np.ndarray, *, memory_size: int | None, seq_len: int = 512,
                    device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``log p(tokens[t] | tokens[:t])`` for ``t >= 1``, reading one stream segment by segment, and the argmax
    there (what greedy decoding would write after ``tokens[:t]``)."""
    stream = torch.as_tensor(np.asarray(tokens), dtype=torch.long).unsqueeze(0)
    logps, argmaxes = [], []
    for batch, logits in read_stream(model, segments(stream, seq_len), memory_size=memory_size, device=device):
        scored = batch.labels[0] != IGNORE_INDEX
        logp = torch.log_softmax(logits[0].float(), dim=-1)
        logps.append(logp.gather(-1, batch.labels[0].clamp(min=0).unsqueeze(-1))[:, 0][scored].cpu())
        argmaxes.append(logp.argmax(-1)[scored].cpu())
    return torch.cat(logps).numpy(), torch.cat(argmaxes).numpy()


def select_documents(documents: Sequence[np.ndarray], *, max_docs: int | None, max_doc_bytes: int | None
                     ) -> list[np.ndarray]:
    """The ``max_docs`` longest documents (memory matters most there), each cut to ``max_doc_bytes`` tokens
    (bytes for a byte-level model)."""
    chosen = sorted(documents, key=len, reverse=True)[:max_docs] if max_docs else list(documents)
    return [d[:max_doc_bytes] if max_doc_bytes else d for d in chosen]


PROGRESS_SECONDS = 30.0  # without a terminal, a progress line this often


class Score(NamedTuple):
    """Totals over the scored tokens: the loss in bits, the number of tokens, and the bytes of text they stand for."""

    bits: float
    tokens: int
    bytes: int

    @property
    def bits_per_byte(self) -> float:
        return self.bits / max(1.0, self.bytes)

    @property
    def perplexity(self) -> float:
        """``exp`` of the mean loss per token (per byte for a byte-level model)."""
        return math.exp(self.bits * math.log(2) / max(1, self.tokens))


@torch.no_grad()
def score(
    model: MemorizingTransformer,
    documents: Sequence[np.ndarray],
    *,
    memory_size: int | None,
    tokenizer: Tokenizer = BYTES,
    batch_size: int = 2,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "eval",
) -> Score:
    """The loss of ``model`` over ``documents`` (token id arrays of ``tokenizer``), read as streams.

    Args:
        memory_size: kNN memory capacity per stream; ``0`` turns the memory off;
            ``None`` uses the model's configured size.
        tokenizer: what the ids are: their document-start and padding ids, and the bytes of text per token.

    Under ``torchrun`` each rank reads every ``world_size``-th document and the
    sums are reduced across ranks, so every rank returns the same total (every rank
    must call it). Where a document starts within a segment changes its loss a
    little, so totals are comparable only at the same world size and batch size.
    """
    documents = list(documents)[distributed.rank() :: distributed.world_size()]
    if not documents:  # more ranks than documents: this rank has nothing to read
        return _reduced(0.0, 0, 0, device)
    stream = DocumentStream(documents, batch_size=batch_size, seq_len=seq_len, repeat=False, sos_id=tokenizer.sos_id,
                            pad_id=tokenizer.pad_id)
    token_bytes = None if tokenizer.token_bytes is None else torch.as_tensor(tokenizer.token_bytes)
    total_bits = torch.zeros((), dtype=torch.float64, device=device)
    counts = {"read": 0, "tokens": 0, "bytes": 0}  # counted on the host, from the batches before they move
    total = sum(len(d) + 1 for d in documents)
    bar = tqdm(total=total, disable=None if progress else True, unit="tok", unit_scale=True, desc=description, leave=False)
    plain_log = progress and bar.disable  # no terminal (a log file): a line at the start and the end instead
    started = time.perf_counter()
    if plain_log:
        print(f"[eval] {description or 'evaluating'}: {total} tokens", file=sys.stderr, flush=True)

    def counted(batches: Iterable[Batch]) -> Iterator[Batch]:
        for batch in batches:
            labels = batch.labels.masked_fill(batch.labels == tokenizer.sos_id, IGNORE_INDEX)
            scored = labels[labels != IGNORE_INDEX]
            read = int((batch.tokens != tokenizer.pad_id).sum())
            counts["read"] += read
            counts["tokens"] += len(scored)
            counts["bytes"] += len(scored) if token_bytes is None else int(token_bytes[scored].sum())
            bar.update(read)
            yield Batch(batch.tokens, labels, batch.new_streams)

    last_line = started
    for batch, logits in read_stream(model, counted(stream), memory_size=memory_size, device=device):
        if plain_log and time.perf_counter() - last_line >= PROGRESS_SECONDS:
            last_line = time.perf_counter()
            print(f"[eval] {description or 'evaluating'}: {counts['read']:,} / {total:,} tokens "
                  f"({100 * counts['read'] / total:.0f}%), {last_line - started:.0f}s", file=sys.stderr, flush=True)
        nll = F.cross_entropy(logits.float().transpose(1, 2), batch.labels, ignore_index=IGNORE_INDEX, reduction="sum")
        total_bits += nll.double() / math.log(2)  # kept on the device: one host sync at the end
    bar.close()
    if plain_log:
        print(f"[eval] {description or 'evaluating'}: done in {time.perf_counter() - started:.0f}s", file=sys.stderr,
              flush=True)
    return _reduced(float(total_bits), counts["tokens"], counts["bytes"], device)


def _reduced(bits: float, tokens: int, size: int, device: str | torch.device) -> Score:
    bits, tokens, size = distributed.sum_values([bits, float(tokens), float(size)], device)
    return Score(bits, int(tokens), int(size))


def bits_per_byte(
    model: MemorizingTransformer,
    documents: Sequence[np.ndarray],
    *,
    memory_size: int | None,
    tokenizer: Tokenizer = BYTES,
    batch_size: int = 2,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = False,
    description: str = "eval",
) -> float:
    """Bits per byte over ``documents`` (see ``score``)."""
    return score(model, documents, memory_size=memory_size, tokenizer=tokenizer, batch_size=batch_size,
                 seq_len=seq_len, device=device, progress=progress, description=description).bits_per_byte


def document_bytes(documents: Sequence[np.ndarray], tokenizer: Tokenizer = BYTES) -> int:
    """The bytes of text ``documents`` (token id arrays of ``tokenizer``) stand for."""
    if tokenizer.token_bytes is None:
        return int(sum(len(d) for d in documents))
    return int(sum(int(tokenizer.token_bytes[np.asarray(d)].sum()) for d in documents))


def evaluate(
    model: MemorizingTransformer,
    documents: Sequence[np.ndarray],
    *,
    memory_sizes: Sequence[int] = (0, 1024, 4096, 16384, 65536),
    baseline: MemorizingTransformer | None = None,
    baseline_label: str = "second checkpoint (kNN memory off)",
    tokenizer: Tokenizer = BYTES,
    batch_size: int = 2,
    seq_len: int = 512,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """The full table: with memory (trained size), without memory, the baseline, and by memory size; bits per
    byte under ``bits_per_byte`` / ``by_memory_size``, token perplexity under ``perplexity`` /
    ``perplexity_by_memory_size``. ``documents`` are ids of ``tokenizer``, which both models must share.
    ``baseline`` is read with its kNN memory off and named ``baseline_label`` in the table and plot."""

    def run(m: MemorizingTransformer, size: int | None, name: str) -> Score:
        return score(m, documents, memory_size=size, tokenizer=tokenizer, batch_size=batch_size, seq_len=seq_len,
                     device=device, progress=progress and distributed.is_main(), description=name)

    trained_size = model.config.max_knn_memories
    by_size = {str(size): run(model, size, f"memory {size}") for size in memory_sizes}
    with_memory = by_size.get(str(trained_size)) or run(model, None, f"memory {trained_size}")
    without_memory = by_size["0"] if "0" in by_size else run(model, 0, "memory off")
    if without_memory.tokens == 0 or without_memory.bytes == 0:
        raise ValueError(f"nothing to score: the {len(documents)} document(s) hold no tokens beyond their start "
                         f"markers")
    scores = {"with_memory": with_memory, "without_memory": without_memory}
    if baseline is not None:
        scores["baseline"] = run(baseline, 0, "baseline")
    result: dict[str, Any] = {
        "bits_per_byte": {name: s.bits_per_byte for name, s in scores.items()},
        "by_memory_size": {size: s.bits_per_byte for size, s in by_size.items()},
        "perplexity": {name: s.perplexity for name, s in scores.items()},
        "perplexity_by_memory_size": {size: s.perplexity for size, s in by_size.items()},
        "trained_memory_size": trained_size,
        "documents": len(documents),
        "tokens": int(sum(len(d) for d in documents)),
        "bytes": document_bytes(documents, tokenizer),
        "tokenizer": "bytes" if tokenizer is BYTES else {"num_tokens": tokenizer.num_tokens, "pad_id": tokenizer.pad_id,
                                                         "sos_id": tokenizer.sos_id},
        "seq_len": seq_len,
        "batch_size": batch_size,
    }
    bpb = result["bits_per_byte"]
    result["memory_gain_percent"] = 100.0 * (bpb["without_memory"] - bpb["with_memory"]) / bpb["without_memory"]
    if baseline is not None:
        result["gain_over_baseline_percent"] = 100.0 * (bpb["baseline"] - bpb["with_memory"]) / bpb["baseline"]
        result["baseline_label"] = baseline_label
    return result


def describe_gain(percent: float) -> str:
    """A gain in bits per byte as words: "12.00% lower bits per byte" (lower is better) or "0.50% higher"."""
    return f"{abs(percent):.2f}% {'lower' if percent >= 0 else 'higher'} bits per byte"


def format_table(result: dict[str, Any]) -> str:
    """The result as a markdown table: bits per byte and perplexity per setting (perplexity is per token; per
    byte for a byte-level model)."""
    bpb, ppl = result["bits_per_byte"], result.get("perplexity", {})
    by_ppl = result.get("perplexity_by_memory_size", {})
    lines = ["| setting | bits per byte | perplexity |", "|---|---|---|"]

    def row(name: str, bits: float, perplexity: float | None) -> None:
        lines.append(f"| {name} | {bits:.4f} | {'' if perplexity is None else f'{perplexity:.3f}'} |")

    row(f"with memory ({result['trained_memory_size']})", bpb["with_memory"], ppl.get("with_memory"))
    row("memory off (same weights)", bpb["without_memory"], ppl.get("without_memory"))
    label = result.get("baseline_label", "second checkpoint (kNN memory off)")
    if "baseline" in bpb:
        row(label, bpb["baseline"], ppl.get("baseline"))
    for size, value in result["by_memory_size"].items():
        row(f"memory size {size}", value, by_ppl.get(size))
    lines.append("")
    lines.append(f"memory on: {describe_gain(result['memory_gain_percent'])} than off"
                 + (f"; {describe_gain(result['gain_over_baseline_percent'])} than the {label}"
                    if "gain_over_baseline_percent" in result else ""))
    tokens = f", {result['tokens']} tokens" if result.get("tokenizer", "bytes") != "bytes" else ""
    lines.append(f"({result['documents']} documents, {result['bytes']} bytes{tokens})")
    return "\n".join(lines)


def save_json(result: dict[str, Any], output_dir: str | Path) -> Path:
    """Writes ``eval.json`` in ``output_dir`` (strict JSON: a value that is not finite becomes null).
    ``plots.save_result`` also draws ``eval.png``."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    json_path = output_dir / "eval.json"
    json_path.write_text(json.dumps(finite_json(result), indent=2, allow_nan=False) + "\n")
    return json_path
