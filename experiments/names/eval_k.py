"""Held-out bits per byte of one trained model with other numbers of retrieved memories k (same weights).

    python experiments/names/eval_k.py runs/long/memory --ks 1,4,8,32 --out k_sweep.json
    python -m experiments.names.eval_k ...      # the same

Documents: the ``--max-docs`` longest held-out test files of ``--data``, cut to ``--max-doc-bytes``.
Also reports memory off. Prints one line per setting and writes a JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
sys.path.insert(0, str(ROOT))

from memorizing_transformers_pytorch.checkpoint import load_model  # noqa: E402
from memorizing_transformers_pytorch.data import load_documents  # noqa: E402
from memorizing_transformers_pytorch.evaluate import bits_per_byte, select_documents  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--ks", default="1,4,8,32")
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--memory-size", type=int, default=16384)
    parser.add_argument("--max-docs", type=int, default=8)
    parser.add_argument("--max-doc-bytes", type=int, default=65536)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="JSON file for the results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    docs = select_documents(load_documents(args.data, "test"), max_docs=args.max_docs, max_doc_bytes=args.max_doc_bytes)
    print(f"{len(docs)} documents, {sum(len(d) for d in docs)} bytes", flush=True)
    results = {}
    settings = [(None, 0)] + [(int(k), args.memory_size) for k in args.ks.split(",") if k.strip()]
    for k, size in settings:
        search = {} if k is None else {"max_knn_memories": size, "num_retrieved_memories": k}
        model = load_model(args.run_dir, **search).eval()
        started = time.perf_counter()
        bits = bits_per_byte(model, docs, memory_size=size, batch_size=4, seq_len=args.seq_len, progress=False)
        label = "memory off" if size == 0 else f"memory {size}, k = {k}"
        results[label] = bits
        print(f"{label}: {bits:.4f} bits per byte ({time.perf_counter() - started:.0f} s)", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"run_dir": args.run_dir, "bits_per_byte": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
