"""Generated tokens per second at kNN memory sizes 0 / 8K / 64K for the demo-sized model (CPU by default).

    .venv/bin/python benchmarks/bench_generate.py [--sizes 0,8192,65536] [--tokens 64] [--device cpu]
        [--knn-index exact,flat] [--seq-len 512] [--kv-heads 1]

The memory is filled first (random unit keys), then the model generates one token at a time with the KV
cache. The figure to watch is the ratio to memory size 0. ``tokens/s`` times a whole ``generate`` call (a
100-token prompt, then ``--tokens`` tokens); ``segment start`` and ``segment end`` time only the tokens, read
at the first and at the last positions of a segment (after a prompt of two segments), so their ratio shows how
a token's cost grows with its position in the segment.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from memorizing_transformers_pytorch import MemorizingTransformer, StreamState
from memorizing_transformers_pytorch.configs import CONFIGS


def segment_rates(model, knn, *, seq_len: int, tokens: int, reps: int, device: str) -> dict[str, float]:
    """Median tokens/s of ``tokens`` tokens read at the start (positions 0, 1, ...) and at the end (up to
    position ``seq_len - 2``) of a segment."""
    rates = {}
    for where, offset in (("start", 0), ("end", seq_len - tokens - 1)):
        prompt = torch.randint(3, 256, (1, 2 * seq_len + offset), device=device)
        per_rep = []
        for _ in range(reps):
            stamps = []

            def stamp(token):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())

            model.generate(prompt, max_new_tokens=tokens + 1, temperature=0.0, on_token=stamp,
                           state=StreamState(seq_len=seq_len, knn_memories=knn))
            per_rep.append(tokens / (stamps[-1] - stamps[0]))  # between the stamps: `tokens` tokens read
        rates[where] = statistics.median(per_rep)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,8192,65536")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per measurement")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kv-heads", type=int, default=CONFIGS["demo"].get("kv_heads", 1),
                        help="key/value heads of the demo model (each one a head of the kNN memory)")
    parser.add_argument("--knn-index", default="exact,flat",
                        help="memory search kinds to time at each size > 0, comma-separated (exact, flat, ivf)")
    parser.add_argument("--seq-len", type=int, default=512, help="segment length of the segment start/end rates")
    parser.add_argument("--out", default="benchmarks/results/generate.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    indexes = [name.strip() for name in args.knn_index.split(",") if name.strip()]
    cases = [(size, index) for size in (int(s) for s in args.sizes.split(",")) for index in (indexes if size else ["-"])]
    for size, index in cases:
        model_config = {**CONFIGS["demo"], "max_knn_memories": max(size, 32), "knn_index": "exact" if index == "-" else index,
                        "kv_heads": args.kv_heads}
        model = MemorizingTransformer(**model_config).to(args.device).eval()
        knn = None
        if size:
            knn = model.create_knn_memories(batch_size=1)
            pairs = torch.randn(1, args.kv_heads, size, 2, 64, device=args.device)
            knn[0].add(torch.nn.functional.normalize(pairs, dim=-1))
        prompt = torch.randint(3, 256, (1, 100), device=args.device)
        model.generate(prompt, max_new_tokens=4, temperature=0.0, state=StreamState(512, knn))  # warm-up
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=args.tokens, temperature=0.0, state=StreamState(512, knn))
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        rates = segment_rates(model, knn, seq_len=args.seq_len, tokens=args.tokens, reps=args.reps, device=args.device)
        rows.append({"memory_size": size, "index": index, "tokens_per_s": args.tokens / seconds,
                     "segment_start_tokens_per_s": rates["start"], "segment_end_tokens_per_s": rates["end"]})
    base = rows[0]["tokens_per_s"]
    print("| kNN memory | search | tokens/s | ratio to first row | segment start | segment end | end / start |\n"
          "|---|---|---|---|---|---|---|")
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / base
        start, end = row["segment_start_tokens_per_s"], row["segment_end_tokens_per_s"]
        print(f"| {row['memory_size']} | {row['index']} | {row['tokens_per_s']:.1f} | {row['ratio']:.2f} | {start:.1f} | "
              f"{end:.1f} | {end / start:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"device": args.device, "threads": torch.get_num_threads(), "kv_heads": args.kv_heads,
              "seq_len": args.seq_len, "tokens": args.tokens, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
