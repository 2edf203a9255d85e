"""How often the ``fused`` search accepts its answer on a trained model's real keys and queries, how often it falls
back to the plain exact search (``search.FusedSearch``), and how far its answers are from the exact ones: a
trained checkpoint reads long documents with ``knn_index="fused"``; each memorizing layer's backend counts its
searches and fallbacks, and each search is also run exactly, to compare the scores rank by rank.

    .venv/bin/python benchmarks/fused_proofs.py --checkpoint runs/token_level/code_seed0/memory \\
        --data runs/token_level/code/shards --split test [--max-docs 2] [--max-tokens 32768] \\
        [--memory-size 16384] [--chunks-per-k 1] [--slack 2] [--out docs/results/fused_proofs.json]

Off CUDA the two stages run as torch code whose first stage rounds as the tensor cores do (tf32 by truncation),
so the proof rate measured here is the GPU's; the times are not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memorizing_transformers_pytorch.checkpoint import load_model  # noqa: E402
from memorizing_transformers_pytorch.data import load_documents  # noqa: E402
from memorizing_transformers_pytorch.evaluate import read_stream, segments, select_documents  # noqa: E402
from memorizing_transformers_pytorch.search import FusedSearch, exact_top_slots  # noqa: E402


def slot_scores(keys: torch.Tensor, slots: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``(B, H, Q, k)`` float64 scores of ``slots`` (-inf where -1)."""
    B, H, Q, k = slots.shape
    rows = slots.clamp(min=0).flatten(2)[..., None].expand(-1, -1, -1, keys.shape[-1])
    found = torch.gather(keys.double(), 2, rows).view(B, H, Q, k, -1) @ queries.double()[..., None]
    return found[..., 0].masked_fill(slots < 0, float("-inf"))


class Compared(FusedSearch):
    """The fused search, each answer compared with the exact search's: the largest shortfall of a returned score
    below the exact one at its rank, and how many queries had any shortfall over 1e-6."""

    def __init__(self, **settings) -> None:
        super().__init__(**settings)
        self.worst, self.queries, self.short = 0.0, 0, 0

    def search(self, keys, count, held, queries, k):
        slots = super().search(keys, count, held, queries, k)
        fused = slot_scores(keys, slots, queries)
        exact = slot_scores(keys, exact_top_slots(keys, count, held, queries, k), queries)
        finite = exact > float("-inf")
        shortfall = torch.where(finite, exact - fused, torch.zeros_like(exact)).amax(dim=-1)
        self.worst = max(self.worst, float(shortfall.max()))
        self.queries += shortfall.numel()
        self.short += int((shortfall > 1e-6).sum())
        return slots


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="a data source (token shards of the checkpoint's tokenizer)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-docs", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32768, help="tokens read per document")
    parser.add_argument("--memory-size", type=int, default=16384)
    defaults = FusedSearch()
    parser.add_argument("--chunks-per-k", type=int, default=defaults.chunks_per_k)
    parser.add_argument("--slack", type=float, default=defaults.slack)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    model = load_model(args.checkpoint, knn_index="fused")
    documents = select_documents(load_documents(args.data, args.split, progress=False), max_docs=args.max_docs,
                                 max_doc_bytes=args.max_tokens)
    rows = []
    for number, document in enumerate(documents):
        stream = torch.as_tensor(document.astype("int64")).unsqueeze(0)
        backends: list[FusedSearch] = []
        original = model.create_knn_memories

        def recording(*a, **kw):
            memories = original(*a, **kw)
            for memory in memories:
                memory.backend = Compared(chunks_per_k=args.chunks_per_k, slack=args.slack)
                backends.append(memory.backend)
            return memories

        model.create_knn_memories = recording
        start = time.perf_counter()
        with torch.no_grad():
            for _ in read_stream(model, segments(stream, args.seq_len), memory_size=args.memory_size):
                pass
        del model.create_knn_memories
        searches = sum(b.searches for b in backends)
        fallbacks = sum(b.fallbacks for b in backends)
        rows.append(dict(document=number, tokens=int(stream.shape[1]), searches=searches, fallbacks=fallbacks,
                         accepted=1 - fallbacks / max(1, searches), queries=sum(b.queries for b in backends),
                         queries_short=sum(b.short for b in backends), worst_shortfall=max(b.worst for b in backends),
                         seconds=time.perf_counter() - start))
        print(json.dumps(rows[-1]), flush=True)
    total_searches = sum(r["searches"] for r in rows)
    total_fallbacks = sum(r["fallbacks"] for r in rows)
    result = dict(checkpoint=args.checkpoint, data=args.data, split=args.split, memory_size=args.memory_size,
                  chunks_per_k=args.chunks_per_k, slack=args.slack, k=model.config.num_retrieved_memories,
                  rows=rows, searches=total_searches, fallbacks=total_fallbacks,
                  accepted=1 - total_fallbacks / max(1, total_searches),
                  queries=sum(r["queries"] for r in rows), queries_short=sum(r["queries_short"] for r in rows),
                  worst_shortfall=max(r["worst_shortfall"] for r in rows))
    print(f"{total_searches} searches, {total_fallbacks} fell back ({100 * result['accepted']:.1f}% accepted); "
          f"{result['queries_short']} of {result['queries']} queries got a score more than 1e-6 below the exact "
          f"one at its rank; worst shortfall {result['worst_shortfall']:.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
