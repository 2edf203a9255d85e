"""Run by ``tests/test_distributed.py`` under ``torchrun --nproc_per_node=2``: trains, then saves what each rank holds.

Usage: torchrun --nproc_per_node=N tests/distributed_worker.py CORPUS OUT_DIR
"""

import shutil
import sys
from pathlib import Path

import torch

from memorizing_transformers_pytorch import distributed
from memorizing_transformers_pytorch.checkpoint import memories_to_tensors
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import bits_per_byte
from memorizing_transformers_pytorch.train import train

sys.path.insert(0, str(Path(__file__).parent))
from test_distributed import MODEL, train_config  # noqa: E402


def main() -> None:
    corpus, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
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
    torch.save({
        "eval_bits_per_byte": eval_bpb,
        "world_size": summary["world_size"],
        "losses": summary["losses"],
        "resumed_losses": resumed["losses"],
        "params": {k: v.detach().clone() for k, v in summary["model"].state_dict().items()},
        "memories": memories_to_tensors(summary["knn_memories"], None),
    }, out / f"rank{rank}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main()
