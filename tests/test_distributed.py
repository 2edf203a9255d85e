"""Multi-process training: 2 CPU processes with gloo under torchrun, compared with one process.

A 2-process run with ``batch_size=B`` reads the same rows as a 1-process run with
``batch_size=2B`` (rank r owns rows ``rB .. rB + B - 1``), so its losses, weights and
memories must match that run's, up to the order of floating-point sums.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from memorizing_transformers_pytorch import MemorizingTransformer, MemorizingTransformerConfig
from memorizing_transformers_pytorch.checkpoint import memories_to_tensors
from memorizing_transformers_pytorch.data import load_documents
from memorizing_transformers_pytorch.evaluate import bits_per_byte
from memorizing_transformers_pytorch.train import TrainConfig, train

MODEL = MemorizingTransformerConfig(
    num_tokens=256, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,), max_knn_memories=64,
    num_retrieved_memories=4, xl_max_memories=16, pad_id=0, clear_memories_on_sos_token_id=2,
)
ROWS_PER_RANK = 2


def train_config(corpus, run_dir, **overrides) -> TrainConfig:
    values = dict(data=str(corpus), run_dir=str(run_dir), seq_len=16, batch_size=ROWS_PER_RANK, steps=6,
                  warmup_steps=2, checkpoint_every=3, log_every=1, lr=3e-3)
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Runs the worker on 2 processes once; returns (corpus, out_dir, [rank0, rank1] results)."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(40):  # documents of different lengths, so rows cross document boundaries at different steps
        (corpus / f"doc{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(3 + i % 7)))
    out = root / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(Path(__file__).parent / "distributed_worker.py"), str(corpus), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return corpus, out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_weights_stay_identical_across_ranks(two_ranks):
    _, _, (rank0, rank1) = two_ranks
    assert rank0["world_size"] == rank1["world_size"] == 2
    for name, tensor in rank0["params"].items():
        assert torch.equal(tensor, rank1["params"][name]), name


def test_two_processes_match_one_process_with_twice_the_batch(two_ranks, tmp_path):
    corpus, _, ranks = two_ranks
    single = train(MODEL, train_config(corpus, tmp_path / "single", batch_size=2 * ROWS_PER_RANK), progress=False)
    assert single["world_size"] == 1
    torch.testing.assert_close(torch.tensor(ranks[0]["losses"]), torch.tensor(single["losses"]), rtol=1e-4, atol=1e-5)
    assert ranks[0]["losses"] == ranks[1]["losses"]  # the logged loss is the mean over ranks
    for name, tensor in single["model"].state_dict().items():
        torch.testing.assert_close(ranks[0]["params"][name], tensor, rtol=1e-3, atol=1e-4)
    # each rank's memories are exactly the single run's memories of that rank's rows: its own documents only
    memories = memories_to_tensors(single["knn_memories"], None)
    for rank, result in enumerate(ranks):
        rows = slice(rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        assert set(result["memories"]) == set(memories)
        for name, tensor in memories.items():
            torch.testing.assert_close(result["memories"][name], tensor[rows], rtol=1e-3, atol=1e-3)
    assert not torch.equal(ranks[0]["memories"]["knn.0.pairs"], ranks[1]["memories"]["knn.0.pairs"])


def test_a_resumed_distributed_run_matches_an_uninterrupted_one(two_ranks):
    _, _, ranks = two_ranks
    for result in ranks:
        assert len(result["resumed_losses"]) == 3
        torch.testing.assert_close(torch.tensor(result["resumed_losses"]), torch.tensor(result["losses"][3:]),
                                   rtol=1e-5, atol=1e-6)


def test_evaluation_is_shared_across_ranks_and_reduced(two_ranks):
    corpus, _, ranks = two_ranks
    model = MemorizingTransformer(MODEL)
    model.load_state_dict(ranks[0]["params"])
    documents = load_documents(str(corpus), "train")[:7]
    # rank r reads documents r, r + 2, ...; where a document starts within a segment changes its loss slightly
    shards = [documents[0::2], documents[1::2]]
    bits = [bits_per_byte(model, shard, memory_size=None, batch_size=2, seq_len=16) * sum(map(len, shard))
            for shard in shards]
    expected = sum(bits) / sum(map(len, documents))
    for result in ranks:
        assert result["eval_bits_per_byte"] == pytest.approx(expected, rel=1e-5)


def test_each_rank_writes_its_own_memory_shard_and_rank_zero_the_rest(two_ranks, tmp_path):
    """No rank sends its memories to another (the worker forbids gather_object): each writes its own shard."""
    corpus, out, ranks = two_ranks
    from safetensors.torch import load_file

    from memorizing_transformers_pytorch.checkpoint import latest_checkpoint, load_checkpoint, load_trainer_state

    checkpoint = load_checkpoint(out / "run")
    assert checkpoint["state"]["world_size"] == 2
    assert "rng" not in load_trainer_state(checkpoint["path"])  # each rank's RNG state is in its own shard
    final = latest_checkpoint(out / "run")
    for rank, result in enumerate(ranks):
        shard = load_file(final / f"memories-rank{rank}.safetensors")
        assert shard["knn.0.count"].shape == (ROWS_PER_RANK,) and shard["rng"].dtype == torch.uint8
        for name, tensor in result["memories"].items():
            assert torch.equal(shard[name], tensor), name
    assert sorted(p.name for p in final.iterdir() if p.name.startswith("memories")) == [
        "memories-rank0.safetensors", "memories-rank1.safetensors"]
    metrics = (out / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 6  # one writer
    # resuming with a different number of processes is refused, and nothing is written
    before = sorted(p.name for p in (out / "run" / "checkpoints").iterdir())
    with pytest.raises(ValueError, match="same world size"):
        train(MODEL, train_config(corpus, out / "run", steps=8), resume=True, progress=False)
    assert sorted(p.name for p in (out / "run" / "checkpoints").iterdir()) == before


def test_a_warmup_with_dropout_and_the_run_continuing_it_keep_every_rank_identical(two_ranks):
    """The copy warm-up is a DDP run like any other, and --init-from loads weights before DDP wraps the model,
    so dropout's different masks per rank never make the ranks' weights diverge."""
    _, _, (rank0, rank1) = two_ranks
    for name, tensor in rank0["continued_params"].items():
        assert torch.equal(tensor, rank1["continued_params"][name]), name


@pytest.mark.parametrize("mode, failing, phase", [("fail-commit", 0, "committing"), ("fail-shard", 1, "memory shard")])
def test_a_failed_checkpoint_on_one_rank_stops_every_rank_and_keeps_the_previous_one(tmp_path, two_ranks, mode,
                                                                                    failing, phase):
    corpus, _, _ = two_ranks
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
               str(Path(__file__).parent / "distributed_worker.py"), str(corpus), str(out), mode]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)  # not the 30-minute timeout
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "disk full (injected)" in text  # the failing rank's own error
    assert f"another process failed while {'committing the checkpoint' if failing == 0 else 'writing its memory shard'}" in text
    from memorizing_transformers_pytorch.checkpoint import latest_checkpoint

    checkpoints = out / "run" / "checkpoints"
    assert latest_checkpoint(out / "run") == checkpoints / "step-0000002"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-0000002"]  # no temporary folder left


def test_the_documented_torchrun_command_trains_and_checkpoints(two_ranks, tmp_path):
    corpus, _, _ = two_ranks
    run = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "memorizing_transformers_pytorch", "train", "--data", str(corpus), "--run-dir", str(run),
               "--steps", "2", "--seq-len", "16", "--batch-size", "1", "--dim", "32", "--depth", "2", "--heads", "2",
               "--dim-head", "16", "--memorizing-layers", "2", "--max-knn-memories", "64", "--xl-max-memories", "16",
               "--checkpoint-every", "0", "--threads", "1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.count("trained to step 2") == 1  # rank 0 reports and writes
    from memorizing_transformers_pytorch.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run)
    assert checkpoint["state"]["world_size"] == 2
    assert sorted(p.name for p in checkpoint["path"].glob("memories-*")) == [
        "memories-rank0.safetensors", "memories-rank1.safetensors"]
