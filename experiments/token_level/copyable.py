"""How much of a held-out text a perfect copier could predict, and from how far back: for each token, the last
earlier place where the same ``--context`` tokens came before; if the token that followed there is this one, the
token is *copyable*, *near* if that place is within ``--window`` tokens (what the local attention and the XL
cache see) and *far* beyond it (what only the kNN memory can reach). Reports the share of tokens and of bytes
(the bits-per-byte weight) of each, per kind, on the documents ``run.sh`` evaluates (the 4 longest of the split,
cut to 32,768 tokens). An upper bound of a kind, not of a model: no model predicts every copy.

    python experiments/token_level/copyable.py runs/token_level [--kinds code,proofs,tex,prose] [--out FILE]
        [--byte-sources stdlib,runs/documents/code]     (also the demo's byte-level view: 32,768 bytes per document,
                                                        --byte-context bytes of context, the same window in bytes)
        [--runs runs/token_level/KIND_seed0]            (where a run's gain comes from: its memory model's bits with
                                                        memory on and off, and its baseline's, summed over near, far
                                                        and other tokens)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import select_documents
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


def attribute(run: Path, docs: list[np.ndarray], byte_lengths: np.ndarray, context: int, window: int) -> dict:
    """Bits of ``run``'s memory model (memory on at its trained size, and off) and of its baseline (off) on
    ``docs``, summed over near-copyable, far-copyable and other tokens, per byte of the documents."""
    from memorizing_transformers_pytorch.checkpoint import load_model
    from memorizing_transformers_pytorch.evaluate import token_log_probs

    memory, baseline = load_model(run / "memory"), load_model(run / "baseline")
    models = {"on": (memory, memory.config.max_knn_memories), "off": (memory, 0), "baseline": (baseline, 0)}
    bits = {name: {"near": 0.0, "far": 0.0, "other": 0.0} for name in models}
    total_bytes = 0
    sos = memory.config.clear_memories_on_sos_token_id
    start = np.array([] if sos is None else [sos], dtype=np.int64)
    scored = slice(1 - len(start), None)  # without a document-start id, the first token is not scored
    for tokens in docs:
        masks = classify(tokens, context, window)
        masks["other"] = ~(masks["near"] | masks["far"])
        masks = {part: mask[scored] for part, mask in masks.items()}
        stream = np.concatenate([start, tokens]).astype(np.int64)  # its log-probs are those of tokens[scored]
        total_bytes += int(byte_lengths[tokens[scored]].sum())
        for name, (model, size) in models.items():
            logp, _ = token_log_probs(model, stream, memory_size=size)
            for part, mask in masks.items():
                bits[name][part] += float(-logp[mask].sum()) / np.log(2)
    per_byte = {name: {part: value / total_bytes for part, value in parts.items()} for name, parts in bits.items()}
    return {"bits_per_byte": per_byte, "bytes": total_bytes,
            "on_vs_off": {part: per_byte["off"][part] - per_byte["on"][part] for part in ("near", "far", "other")},
            "on_vs_baseline": {part: per_byte["baseline"][part] - per_byte["on"][part]
                               for part in ("near", "far", "other")}}


def kind_documents(folder: Path, kind: str, max_docs: int, max_tokens: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The documents ``run.sh`` evaluates for ``kind`` (from its shards), and the bytes each token stands for."""
    tokenizer = load_tokenizer(folder / kind / "tokenizer.json")
    shards = load_documents(f"shards:{folder / kind / 'shards'}", SPLITS.get(kind, "test"))
    docs = select_documents([np.asarray(d, dtype=np.int64) for d in shards], max_docs=max_docs, max_doc_bytes=max_tokens)
    return docs, np.asarray(tokenizer.token_bytes, dtype=np.int64)


def byte_documents(source: str, max_docs: int, max_bytes: int) -> list[np.ndarray]:
    """The test documents of a byte-level source as the demo evaluates them, as int64 byte arrays."""
    docs = [np.frombuffer(bytes(d), dtype=np.uint8).astype(np.int64) for d in load_documents(source, "test")]
    return select_documents(docs, max_docs=max_docs, max_doc_bytes=max_bytes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="run.sh's OUT (holding KIND/tokenizer.json and KIND/shards)")
    parser.add_argument("--kinds", default="code,proofs,tex,prose")
    parser.add_argument("--context", type=int, default=3, help="tokens that must match before a copy")
    parser.add_argument("--window", type=int, default=1024, help="tokens the local attention and XL cache reach")
    parser.add_argument("--max-docs", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32768)
    parser.add_argument("--byte-sources", default="", help="comma-separated byte-level sources to measure too")
    parser.add_argument("--byte-context", type=int, default=8, help="bytes that must match before a byte copy")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for --runs")
    parser.add_argument("--runs", default="", help="comma-separated run folders (KIND_seedN) to attribute gains in")
    parser.add_argument("--out", type=Path, default=None, help="a JSON file for the result")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {"context": args.context, "window": args.window, "kinds": {}}
    print(f"| kind | tokens | near copies (tokens / bytes) | far copies, beyond {args.window} tokens (tokens / bytes) |")
    print("|---|---|---|---|")
    docs_by_kind = {}
    for kind in args.kinds.split(","):
        docs, byte_lengths = kind_documents(args.folder, kind, args.max_docs, args.max_tokens)
        docs_by_kind[kind] = docs, byte_lengths
        row = measure(docs, byte_lengths, args.context, args.window)
        result["kinds"][kind] = row
        print(f"| {kind} | {row['tokens']:,} | {row['near_tokens_percent']:.1f}% / {row['near_bytes_percent']:.1f}% | "
              f"{row['far_tokens_percent']:.1f}% / {row['far_bytes_percent']:.1f}% |")
    for source in filter(None, args.byte_sources.split(",")):
        row = measure(byte_documents(source, args.max_docs, args.max_tokens), np.ones(256, dtype=np.int64), args.byte_context, args.window)
        result.setdefault("bytes", {})[source] = {**row, "context": args.byte_context}
        print(f"| {source}, bytes | {row['tokens']:,} | {row['near_tokens_percent']:.1f}% | "
              f"{row['far_tokens_percent']:.1f}% |")
    if args.runs:
        print("\n| run | part | on | off | baseline | on vs off | on vs baseline | (bits per byte of all the text) |")
        print("|---|---|---|---|---|---|---|---|")
    for run in map(Path, filter(None, args.runs.split(","))):
        from memorizing_transformers_pytorch.checkpoint import load_checkpoint, load_config, resolve_checkpoint

        data = load_checkpoint(run / "memory")["train_config"]["data"]
        if load_config(resolve_checkpoint(run / "memory")).num_tokens != 256:  # a token-level run: KIND_seedN
            docs, byte_lengths = docs_by_kind[run.name.split("_")[0]]
            context = args.context
        else:  # a byte-level run (the demo's): the bytes of its own test documents
            docs = byte_documents(data, args.max_docs, args.max_tokens)
            byte_lengths, context = np.ones(256, dtype=np.int64), args.byte_context
        row = attribute(run, docs, byte_lengths, context, args.window)
        result.setdefault("runs", {})[str(run)] = row
        for part in ("near", "far", "other"):
            b = {name: row["bits_per_byte"][name][part] for name in ("on", "off", "baseline")}
            print(f"| {run.name} | {part} | {b['on']:.4f} | {b['off']:.4f} | {b['baseline']:.4f} | "
                  f"{row['on_vs_off'][part]:+.4f} | {row['on_vs_baseline'][part]:+.4f} | |")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
