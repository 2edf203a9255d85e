"""GPU timings in one short call: exact KNNMemory search and model steps, fp32 and bf16, and the card's dense
bf16 matmul rate measured in the same process (8192^3), so that the search's rate reads as a share of it.

    python3 benchmarks/gpu_quick.py --out DIR        (writes DIR/gpu_quick.json, prints a table)
"""

import argparse
import json
import time
from pathlib import Path

import torch

from memorizing_transformers_pytorch import KNNMemory, MemorizingTransformer


def cuda_ms(fn, reps=10, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def matmul_tflops(dtype, n=8192):
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n**3 / cuda_ms(lambda: a @ b) / 1e9


def memory_rows(dtype):
    rows = []
    for size in (16384, 65536, 262144, 1048576):
        memory = KNNMemory(dim=64, max_memories=size, num_indices=2)
        for start in range(0, size, 65536):
            memory.add(torch.nn.functional.normalize(torch.randn(2, min(65536, size), 2, 64, device="cuda"), dim=-1).to(dtype))
        queries = torch.randn(2, 4096, 64, device="cuda", dtype=dtype)
        torch.cuda.reset_peak_memory_stats()
        search = cuda_ms(lambda: memory.search(queries, 32))
        new = torch.randn(2, 512, 2, 64, device="cuda", dtype=dtype)
        add = cuda_ms(lambda: memory.add(new))
        flops = 2 * 2 * 4096 * size * 64
        rows.append(dict(kind="memory", dtype=str(dtype), size=size, search_ms=search, add_ms=add,
                         search_tflops=flops / search / 1e9, peak_gib=torch.cuda.max_memory_allocated() / 2**30))
        memory = None  # free it before the next size
        torch.cuda.empty_cache()
    return rows


def model_row(bf16, memorizing, size, index):
    model = MemorizingTransformer(num_tokens=256, dim=256, depth=4, heads=4, dim_head=64,
                                  memorizing_layers=memorizing, max_knn_memories=size, knn_index=index,
                                  xl_max_memories=512, xl_memory_layers=(3, 4)).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    knn = model.create_knn_memories(batch_size=2)
    for memory in knn:
        memory.add(torch.nn.functional.normalize(torch.randn(2, size, 2, 64, device="cuda"), dim=-1))
    state = {"xl": None}
    x = torch.randint(0, 256, (2, 512), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss, state["xl"] = model(x, knn_memories=knn, xl_memories=state["xl"], labels=x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def infer():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            _, state["xl"] = model(x, knn_memories=knn, xl_memories=state["xl"])

    train_ms, infer_ms = cuda_ms(step), cuda_ms(infer)
    return dict(train_ms=train_ms, train_tokens_s=1024 / train_ms * 1000,
                infer_ms=infer_ms, infer_tokens_s=1024 / infer_ms * 1000)


def model_rows(bf16):
    """Training and inference steps without memory, and with 16K / 64K memories searched by the default (exact)
    and the fused search; a case that fails is recorded with its error, and the others still run."""
    rows = []
    for memorizing, size, index in (((), 16384, "auto"), ((3,), 16384, "auto"), ((3,), 65536, "auto"),
                                    ((3,), 16384, "fused"), ((3,), 65536, "fused")):
        row = dict(kind="model", bf16=bf16, memorizing_layers=list(memorizing), memories=size, knn_index=index)
        try:
            row.update(model_row(bf16, memorizing, size, index))
        except Exception as error:  # noqa: BLE001 - one failed case must not cost the call's other numbers
            row["error"] = repr(error)[:500]
        show(row)
        rows.append(row)
    return rows


def show(row):
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_quick.py needs CUDA; none is available here")
    peak = matmul_tflops(torch.bfloat16)
    rows = [dict(kind="matmul", dtype="torch.bfloat16", n=8192, tflops=peak)]
    show(rows[0])
    for dtype in (torch.float32, torch.bfloat16):
        for row in memory_rows(dtype):
            row["search_share_of_bf16_matmul"] = row["search_tflops"] / peak
            show(row)
            rows.append(row)
    rows += model_rows(False) + model_rows(True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_quick.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
