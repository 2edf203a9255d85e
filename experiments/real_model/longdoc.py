"""Perplexity and bits per byte of a pretrained model on long held-out documents: the plain model in independent
windows, and 512-token segments with the kNN memory (by memory size).

    python -m experiments.real_model.longdoc --model runs/real_model/smollm2 --label untrained \\
        --windows 512,2048,8192 --memory-sizes 4096,8192,16384 --out docs/results/real_model_longdoc.json

Each measurement is merged into ``--out`` as soon as it is done (keyed by label, document and setting), so
several runs (the untrained model, then fine-tuned ones) fill one file, and an interrupted run keeps its numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from memorizing_transformers_pytorch.evaluate import token_log_probs
from memorizing_transformers_pytorch.hf import HFMemoryConfig, MemorizingHFModel

from .documents import DOCS_DIR, NAMES, document_text


def score(model: MemorizingHFModel, ids: np.ndarray, text_bytes: int, *, seq_len: int, memory_size: int) -> dict:
    started = time.perf_counter()
    log_probs, _ = token_log_probs(model, ids, memory_size=memory_size, seq_len=seq_len)
    seconds = time.perf_counter() - started
    nats = -float(log_probs.sum())
    return {"perplexity": math.exp(nats / len(log_probs)), "bits_per_byte": nats / math.log(2) / text_bytes,
            "scored_tokens": len(log_probs), "seconds": seconds, "tokens_per_s": len(ids) / seconds}


def merge(path: Path, key: list[str], value: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    node = data
    for part in key[:-1]:
        node = node.setdefault(part, {})
    node[key[-1]] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder or GGUF file (MemorizingHFModel.from_pretrained)")
    parser.add_argument("--label", required=True, help="the name of this model in the results (e.g. untrained)")
    parser.add_argument("--documents", default=",".join(NAMES))
    parser.add_argument("--docs-dir", default=str(DOCS_DIR))
    parser.add_argument("--tokens", type=int, default=16384, help="the first N tokens of each document")
    parser.add_argument("--windows", default="", help="plain model in independent windows of these lengths")
    parser.add_argument("--memory-sizes", default="", help="512-token segments with a memory of these sizes")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="docs/results/real_model_longdoc.json")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = MemorizingHFModel.from_pretrained(args.model).eval()
    plain = MemorizingHFModel(model.hf, HFMemoryConfig(memorizing_layers=())).eval()
    out = Path(args.out)
    windows = [int(w) for w in args.windows.split(",") if w]
    sizes = [int(s) for s in args.memory_sizes.split(",") if s]
    for name in args.documents.split(","):
        text = document_text(name, args.docs_dir)
        ids = np.asarray(model.tokenizer(text, add_special_tokens=False)["input_ids"][: args.tokens])
        if len(ids) < args.tokens:
            print(f"warning: {name} has only {len(ids)} tokens")
        text_bytes = len(model.tokenizer.decode(ids[1:].tolist()).encode("utf-8"))  # the scored tokens' text
        merge(out, ["documents", name], {"tokens": len(ids), "scored_bytes": text_bytes})
        runs = [(f"window_{w}", plain, w, 0) for w in windows]
        runs += [(f"memory_{s}", model, args.seq_len, s) for s in sizes]
        for setting, which, seq_len, size in runs:
            result = score(which, ids, text_bytes, seq_len=seq_len, memory_size=size)
            result.update(seq_len=seq_len, memory_size=size, model=args.model, memory_config=which.config.to_dict())
            merge(out, ["results", args.label, name, setting], result)
            print(f"{args.label:12s} {name:6s} {setting:14s} ppl {result['perplexity']:7.3f}  bpb "
                  f"{result['bits_per_byte']:.4f}  {result['seconds']:.0f}s", flush=True)


if __name__ == "__main__":
    main()
