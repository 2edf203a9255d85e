"""Generated tokens per second at kNN memory sizes 0 / 8K / 64K for the demo-sized model (CPU by default).

    .venv/bin/python benchmarks/bench_generate.py [--sizes 0,8192,65536] [--tokens 64] [--device cpu]
        [--knn-index exact,flat]

The memory is filled first (random unit keys), then the model generates one token at a time with the KV
cache. The figure to watch is the ratio to memory size 0.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from memorizing_transformers_pytorch import MemorizingTransformer
from memorizing_transformers_pytorch.configs import CONFIGS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="0,8192,65536")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per measurement")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--knn-index", default="exact,flat",
                        help="memory search kinds to time at each size > 0, comma-separated (exact, flat, ivf)")
    parser.add_argument("--out", default="benchmarks/results/generate.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    indexes = [name.strip() for name in args.knn_index.split(",") if name.strip()]
    cases = [(size, index) for size in (int(s) for s in args.sizes.split(",")) for index in (indexes if size else ["-"])]
    for size, index in cases:
        model_config = {**CONFIGS["demo"], "max_knn_memories": max(size, 32), "knn_index": "exact" if index == "-" else index}
        model = MemorizingTransformer(**model_config).to(args.device).eval()
        knn = None
        if size:
            knn = model.create_knn_memories(batch_size=1)
            knn[0].add(torch.nn.functional.normalize(torch.randn(1, size, 2, 64, device=args.device), dim=-1))
        prompt = torch.randint(3, 256, (1, 100), device=args.device)
        model.generate(prompt, max_new_tokens=4, knn_memories=knn, temperature=0.0)  # warm-up
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            model.generate(prompt, max_new_tokens=args.tokens, knn_memories=knn, temperature=0.0)
            times.append(time.perf_counter() - start)
        seconds = sorted(times)[len(times) // 2]
        rows.append({"memory_size": size, "index": index, "tokens_per_s": args.tokens / seconds})
    base = rows[0]["tokens_per_s"]
    print("| kNN memory | search | tokens/s | ratio to first row |\n|---|---|---|---|")
    for row in rows:
        row["ratio"] = row["tokens_per_s"] / base
        print(f"| {row['memory_size']} | {row['index']} | {row['tokens_per_s']:.1f} | {row['ratio']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(), "rows": rows},
                                         indent=2) + "\n")


if __name__ == "__main__":
    main()
