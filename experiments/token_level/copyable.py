"""How much of a held-out text a perfect copier could predict, and from how far back: for each token, the last
earlier place where the same ``--context`` tokens came before; if the token that followed there is this one, the
token is *copyable*, *near* if that place is within ``--window`` tokens (what the local attention and the XL
cache see) and *far* beyond it (what only the kNN memory can reach). Reports the share of tokens and of bytes
(the bits-per-byte weight) of each, per kind, on the documents ``run.sh`` evaluates (the 4 longest of the split,
cut to 32,768 tokens). An upper bound of a kind, not of a model: no model predicts every copy.

    python experiments/token_level/copyable.py runs/token_level [--kinds code,proofs,tex,prose] [--out FILE]
        [--byte-sources stdlib,runs/documents/code]     (also the demo's byte-level view: 32,768 bytes per document,
                                                        --byte-context bytes of context, the same window in bytes)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.tokenizer import load_tokenizer

SPLITS = {"tex": "valid"}  # as run.sh: pari-doc's test split holds no long file


def classify(tokens: np.ndarray, context: int, window: int) -> dict[str, np.ndarray]:
    """Boolean masks over ``tokens``: ``near`` and ``far`` copyable positions (see the module's docstring)."""
    last: dict[tuple, int] = {}
    near = np.zeros(len(tokens), dtype=bool)
    far = np.zeros(len(tokens), dtype=bool)
    values = tokens.tolist()
    for t in range(context, len(values)):
        key = tuple(values[t - context:t])
        p = last.get(key)
        if p is not None and values[p] == values[t]:
            (near if t - p <= window else far)[t] = True
        last[key] = t
    return {"near": near, "far": far}


def measure(tokens_by_doc: list[np.ndarray], byte_lengths: np.ndarray, context: int, window: int) -> dict:
    counts = {"tokens": 0, "bytes": 0, "near_tokens": 0, "far_tokens": 0, "near_bytes": 0, "far_bytes": 0}
    for tokens in tokens_by_doc:
        masks = classify(tokens, context, window)
        lengths = byte_lengths[tokens]
        counts["tokens"] += len(tokens)
        counts["bytes"] += int(lengths.sum())
        for name, mask in masks.items():
            counts[f"{name}_tokens"] += int(mask.sum())
            counts[f"{name}_bytes"] += int(lengths[mask].sum())
    return {**counts, **{f"{name}_{unit}_percent": 100.0 * counts[f"{name}_{unit}"] / max(1, counts[unit])
                         for name in ("near", "far") for unit in ("tokens", "bytes")}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="run.sh's OUT (holding KIND/tokenizer.json and KIND/shards)")
    parser.add_argument("--documents", type=Path, default=Path("runs/documents"),
                        help="scripts/fetch_documents.py's folder (for a kind without shards: tex)")
    parser.add_argument("--kinds", default="code,proofs,tex,prose")
    parser.add_argument("--context", type=int, default=3, help="tokens that must match before a copy")
    parser.add_argument("--window", type=int, default=1024, help="tokens the local attention and XL cache reach")
    parser.add_argument("--max-docs", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--byte-sources", default="", help="comma-separated byte-level sources to measure too")
    parser.add_argument("--byte-context", type=int, default=8, help="bytes that must match before a byte copy")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the result")
    args = parser.parse_args(argv)
    result = {"context": args.context, "window": args.window, "kinds": {}}
    print(f"| kind | tokens | near copies (tokens / bytes) | far copies, beyond {args.window} tokens (tokens / bytes) |")
    print("|---|---|---|---|")
    for kind in args.kinds.split(","):
        tokenizer = load_tokenizer(args.folder / kind / "tokenizer.json")
        split = SPLITS.get(kind, "test")
        shards = args.folder / kind / "shards"
        if (shards / "meta.json").is_file():
            docs = [np.asarray(d, dtype=np.int64) for d in load_documents(f"shards:{shards}", split)]
        else:
            docs = [np.asarray(tokenizer.encode(bytes(t).decode("utf-8", errors="replace")), dtype=np.int64)
                    for t in load_documents(str(args.documents / kind), split)]
        docs = [d[:args.max_tokens] for d in sorted(docs, key=len, reverse=True)[:args.max_docs]]
        row = measure(docs, np.asarray(tokenizer.token_bytes, dtype=np.int64), args.context, args.window)
        result["kinds"][kind] = row
        print(f"| {kind} | {row['tokens']:,} | {row['near_tokens_percent']:.1f}% / {row['near_bytes_percent']:.1f}% | "
              f"{row['far_tokens_percent']:.1f}% / {row['far_bytes_percent']:.1f}% |")
    for source in filter(None, args.byte_sources.split(",")):
        docs = [np.frombuffer(bytes(d), dtype=np.uint8).astype(np.int64) for d in load_documents(source, "test")]
        docs = [d[:args.max_tokens] for d in sorted(docs, key=len, reverse=True)[:args.max_docs]]
        row = measure(docs, np.ones(256, dtype=np.int64), args.byte_context, args.window)
        result.setdefault("bytes", {})[source] = {**row, "context": args.byte_context}
        print(f"| {source}, bytes | {row['tokens']:,} | {row['near_tokens_percent']:.1f}% | "
              f"{row['far_tokens_percent']:.1f}% |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
