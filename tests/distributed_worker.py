"""Run by ``tests/test_distributed.py`` under ``torchrun --nproc_per_node=2``: trains, then saves what each rank holds.

Usage: torchrun --nproc_per_node=N tests/distributed_worker.py CORPUS OUT_DIR [MODE]

MODE ``train`` (default): a run, the same run resumed from its step-3 checkpoint, an evaluation, and a copy
warm-up with dropout continued by ``init_from``; each rank saves what it holds to ``OUT_DIR/rank{R}.pt``.
MODE ``fail-commit`` / ``fail-shard``: rank 0's commit (or rank 1's memory shard) fails at the step-4 checkpoint.
"""

import dataclasses
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from memorizing_transformers_pytorch import distributed
from memorizing_transformers_pytorch import train as train_module
from memorizing_transformers_pytorch.checkpoint import memories_to_tensors
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import bits_per_byte
from memorizing_transformers_pytorch.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import MODEL, train_config  # noqa: E402


def forbidden(*args, **kwargs):
    raise AssertionError("checkpoints must not send memories between ranks (gather_object)")


def fail_at_step(name: str, failing_rank: int) -> None:
    real = getattr(train_module, name)

    def failing(*args, **kwargs):
        if distributed.rank() == failing_rank and "step-0000004" in str(args[0]):
            raise OSError(f"{name}: disk full (injected)")
        return real(*args, **kwargs)

    setattr(train_module, name, failing)


def main() -> None:
    corpus, out = sys.argv[1], Path(sys.argv[2])
    mode = sys.argv[3] if len(sys.argv) > 3 else "train"
    torch.set_num_threads(1)
    dist.gather_object = forbidden
    if mode != "train":
        fail_at_step({"fail-commit": "commit_checkpoint", "fail-shard": "write_shard"}[mode],
                     {"fail-commit": 0, "fail-shard": 1}[mode])
        train(MODEL, train_config(corpus, out / "run", checkpoint_every=2), progress=False)  # raises at step 4
        return
    summary = train(MODEL, train_config(corpus, out / "run"), progress=False)
    rank = distributed.rank()
    # the same run as if it had died after its step-3 checkpoint, resumed
    if rank == 0:
        shutil.copytree(out / "run", out / "resumed")
        (out / "resumed" / "checkpoints" / "latest").write_text("step-0000003\n")
    distributed.barrier()
    resumed = train(MODEL, train_config(corpus, out / "resumed"), resume=True, progress=False)
    eval_documents = load_documents(corpus, "train")[:7]
    eval_bpb = bits_per_byte(summary["model"], eval_documents, memory_size=None, batch_size=2, seq_len=16)
    # a copy warm-up with dropout (different masks on each rank), then a run that continues it
    noisy = dataclasses.replace(MODEL, attn_dropout=0.2, ff_dropout=0.2)
    train(noisy, train_config("copy:span=4", out / "warmup", steps=3), progress=False)
    continued = train(noisy, train_config(corpus, out / "continued", steps=2, init_from=str(out / "warmup")),
                      progress=False)
    torch.save({
        "eval_bits_per_byte": eval_bpb,
        "world_size": summary["world_size"],
        "losses": summary["losses"],
        "resumed_losses": resumed["losses"],
        "params": {k: v.detach().clone() for k, v in summary["model"].state_dict().items()},
        "memories": {k: v.clone() for k, v in memories_to_tensors(summary["knn_memories"], None).items()},
        "continued_params": {k: v.detach().clone() for k, v in continued["model"].state_dict().items()},
    }, out / f"rank{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main()
