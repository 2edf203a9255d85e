"""The paper's fine-tuning result (§4.5) in small: a pretrained vanilla model given a kNN memory.

On the standard library (bytes), with a byte-level Llama config:

1. **pretrain** a vanilla model from scratch for ``P`` steps; it is saved with ``save_pretrained`` (the
   "pretrained model");
2. from it, for ``E`` more steps (about 5% of ``P``): **(a) continue** without memory, **(b) fine-tune with
   memory** (the whole model, plus the new gate and temperature), and **(b2) train only the new parameters**;
3. **(c)** train a memory model **from scratch** for the full budget ``P + E``.

Then held-out bits per byte of each, and the share of the gap from (a) to (c) that (b) closes. Every run goes
through the library's ``Trainer`` with the Hugging Face adapter (``memorizing_transformers_pytorch.hf``). Phases
run as separate processes, at most two at once, each with ``--threads`` torch threads::

    python -m experiments.hf_finetune.run all --root runs/hf_finetune --pretrain-steps 1200 --extra-steps 60

``all`` writes ``ROOT/results.json`` (and prints the table); ``phase NAME`` runs one phase (what ``all`` starts).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from memorizing_transformers_pytorch.data import PAD_ID, SOS_ID, load_documents
from memorizing_transformers_pytorch.evaluate import bits_per_byte, select_documents
from memorizing_transformers_pytorch.hf import HFMemoryConfig, MemorizingHFModel
from memorizing_transformers_pytorch.train import TrainConfig, Trainer

# a byte-level Llama: RoPE, grouped-query attention (2 kv heads for 4 query heads), SwiGLU, RMSNorm
LLAMA = dict(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False, bos_token_id=SOS_ID,
             eos_token_id=None, pad_token_id=PAD_ID)
MEMORY_LAYER = 3  # of 4: the upper middle (the default, three quarters up)
# training phases and what each needs first; "eval" evaluates one trained run (--runs NAME)
PHASES = {"pretrain": (), "scratch": (), "scratch_two_phase": (), "continue": ("pretrain",), "finetune": ("pretrain",),
          "finetune_small_gate": ("pretrain",), "finetune_new_only": ("pretrain",)}


def memory_config(args: argparse.Namespace, layers: tuple[int, ...], gate_bias_init: float = 0.0) -> HFMemoryConfig:
    return HFMemoryConfig(memorizing_layers=layers, max_knn_memories=args.memory, num_retrieved_memories=32,
                          knn_index=args.knn_index, knn_gate_bias_init=gate_bias_init,
                          clear_memories_on_sos_token_id=SOS_ID, pad_id=PAD_ID)


def new_model(args: argparse.Namespace, name: str, layers: tuple[int, ...]) -> MemorizingHFModel:
    """A randomly initialised Llama (the same for every run of a seed), saved and loaded back as a user would
    load a pretrained one."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(args.seed)
    folder = Path(args.root) / name / "init"
    AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA)).save_pretrained(folder)
    return MemorizingHFModel.from_pretrained(folder, memory_config(args, layers))


def train(args: argparse.Namespace, model: MemorizingHFModel, name: str, steps: int, *, lr: float, warmup: int,
          min_lr_ratio: float, knn_memory: bool) -> dict[str, Any]:
    config = TrainConfig(data="stdlib", run_dir=str(Path(args.root) / name), seq_len=args.seq_len,
                         batch_size=args.batch_size, steps=steps, lr=lr, warmup_steps=warmup, min_lr_ratio=min_lr_ratio,
                         checkpoint_every=0, log_every=25, seed=args.seed, knn_memory=knn_memory)
    summary = Trainer(model.config, config, model=model, progress=False).run()
    model.save_pretrained(Path(args.root) / name / "model", train_config=config.to_dict())
    losses = summary["losses"]
    return {"steps": summary["step"], "seconds": summary["elapsed_s"], "final_loss": losses[-1] if losses else None,
            "train_config": config.to_dict()}


def phase(args: argparse.Namespace) -> None:
    root = Path(args.root)
    pretrained = root / "pretrained"  # the plain Hugging Face folder of the pretrained model
    extra = dict(lr=args.extra_lr, warmup=10, min_lr_ratio=1.0)
    if args.phase == "pretrain":
        model = new_model(args, "pretrain", ())
        info = train(args, model, "pretrain", args.pretrain_steps, lr=args.lr, warmup=100, min_lr_ratio=0.1,
                     knn_memory=False)
        model.hf.save_pretrained(pretrained)
    elif args.phase == "scratch":
        info = train(args, new_model(args, "scratch", (MEMORY_LAYER,)), "scratch", args.pretrain_steps + args.extra_steps,
                     lr=args.lr, warmup=100, min_lr_ratio=0.1, knn_memory=True)
    elif args.phase == "scratch_two_phase":  # (c2): (c) on the schedule of (a) and (b): P steps, then E more
        model = new_model(args, "scratch_pretrain", (MEMORY_LAYER,))
        first = train(args, model, "scratch_pretrain", args.pretrain_steps, lr=args.lr, warmup=100, min_lr_ratio=0.1,
                      knn_memory=True)
        model = MemorizingHFModel.from_pretrained(root / "scratch_pretrain" / "model")
        info = train(args, model, "scratch_two_phase", args.extra_steps, knn_memory=True, **extra)
        info["first_phase"] = {k: v for k, v in first.items() if k != "train_config"}
    elif args.phase == "continue":
        model = MemorizingHFModel.from_pretrained(pretrained, memory_config(args, ()))
        info = train(args, model, "continue", args.extra_steps, knn_memory=False, **extra)
    elif args.phase == "finetune":
        model = MemorizingHFModel.from_pretrained(pretrained, memory_config(args, (MEMORY_LAYER,), args.gate_bias_init))
        info = train(args, model, "finetune", args.extra_steps, knn_memory=True, **extra)
    elif args.phase == "finetune_small_gate":  # (b) with the memory mixed in at sigmoid(-3) = 5% at first
        model = MemorizingHFModel.from_pretrained(pretrained, memory_config(args, (MEMORY_LAYER,), args.small_gate_bias_init))
        info = train(args, model, "finetune_small_gate", args.extra_steps, knn_memory=True, **extra)
    elif args.phase == "finetune_new_only":
        model = MemorizingHFModel.from_pretrained(pretrained, memory_config(args, (MEMORY_LAYER,), args.gate_bias_init))
        model.train_only_memory_parameters()
        info = train(args, model, "finetune_new_only", args.extra_steps, knn_memory=True, lr=args.new_only_lr,
                     warmup=10, min_lr_ratio=1.0)
    else:
        raise ValueError(f"unknown training phase {args.phase!r}")
    (root / f"{args.phase}.json").write_text(json.dumps(info, indent=2) + "\n")


def evaluate_runs(args: argparse.Namespace) -> dict[str, Any]:
    """Held-out bits per byte of the runs named in ``--runs`` (memory on and off for memory models)."""
    documents = select_documents(load_documents("stdlib", "test"), max_docs=args.eval_docs,
                                 max_doc_bytes=args.eval_doc_bytes)
    results = {}
    for name in args.runs.split(","):
        model = MemorizingHFModel.from_pretrained(Path(args.root) / name / "model").eval()
        sizes = {"on": None, "off": 0} if model.config.memorizing_layers else {"off": 0}
        results[name] = {
            setting: bits_per_byte(model, documents, memory_size=size, batch_size=args.eval_batch_size,
                                   seq_len=args.seq_len)
            for setting, size in sizes.items()
        }
        print(name, results[name], flush=True)
    return {"documents": len(documents), "bytes": int(sum(len(d) for d in documents)), "bits_per_byte": results}


def run_all(args: argparse.Namespace) -> None:
    """Every phase, then each run's evaluation, at most two processes at a time; phases whose JSON exists are
    skipped (so an interrupted ``all`` continues)."""
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, "-m", "experiments.hf_finetune.run", "phase", "--root", str(root)]
    for flag in ("pretrain_steps", "extra_steps", "seq_len", "batch_size", "memory", "knn_index", "lr", "extra_lr",
                 "new_only_lr", "gate_bias_init", "small_gate_bias_init", "seed", "threads", "eval_docs",
                 "eval_doc_bytes", "eval_batch_size"):
        common += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    started = time.perf_counter()
    jobs = {name: (common + ["--phase", name], needs) for name, needs in PHASES.items()}
    for name in EVALUATED:
        jobs[f"eval_{name}"] = (common + ["--phase", "eval", "--runs", name, "--eval-name", f"eval_{name}"], (name,))
    _run_queue(jobs, root, parallel=2)
    result = summarize(args, time.perf_counter() - started)
    (root / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))


def _run_queue(jobs: dict[str, tuple[list[str], tuple[str, ...]]], root: Path, *, parallel: int) -> None:
    """Runs each job (a command writing ``ROOT/NAME.json``) once the jobs it needs are done."""
    done = {name for name in jobs if (root / f"{name}.json").is_file()}
    running: dict[str, tuple[subprocess.Popen, Any]] = {}
    while len(done) < len(jobs):
        for name, (command, needs) in jobs.items():
            if name not in done and name not in running and len(running) < parallel and set(needs) <= done:
                log = open(root / f"{name}.log", "w")
                running[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log)
        if not running:
            raise SystemExit(f"jobs wait on each other: {sorted(set(jobs) - done)}")
        time.sleep(2)
        for name, (process, log) in list(running.items()):
            if process.poll() is not None:
                log.close()
                del running[name]
                if process.returncode != 0:
                    raise SystemExit(f"{name} failed: see {root / (name + '.log')}")
                done.add(name)


ROWS = (  # (run, label, steps) in the table; steps from P (pretraining) and E (extra)
    ("pretrain", "pretrained vanilla model", "P"),
    ("continue", "(a) continued without memory", "P + E"),
    ("finetune", "(b) fine-tuned with memory: whole model, gate bias 0 at first (the paper's)", "P + E"),
    ("finetune_small_gate", "(b') fine-tuned with memory: whole model, gate bias -3 at first", "P + E"),
    ("finetune_new_only", "(b2) fine-tuned with memory: new parameters only, gate bias 0 at first", "P + E"),
    ("scratch", "(c) memory model from scratch, one schedule", "P + E"),
    ("scratch_two_phase", "(c2) memory model from scratch, the schedule of (a) and (b)", "P + E"),
)
EVALUATED = tuple(name for name, _, _ in ROWS)


def _bpb(bpb: dict[str, Any], run: str) -> float:
    """The run's bits per byte as trained: memory on for memory models."""
    return bpb[run].get("on", bpb[run]["off"])


def summarize(args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    root = Path(args.root)
    evals = {name: json.loads((root / f"eval_{name}.json").read_text()) for name in EVALUATED}
    bpb = {name: e["bits_per_byte"][name] for name, e in evals.items()}
    runs = {name: json.loads((root / f"{name}.json").read_text()) for name in PHASES}
    a = _bpb(bpb, "continue")
    gaps = {}
    for reference in ("scratch", "scratch_two_phase"):
        gap = a - _bpb(bpb, reference)
        gaps[reference] = {
            "gap_a_minus_c": gap,  # > 0: the memory model from scratch is better than (a)
            "share_closed": {run: ((a - _bpb(bpb, run)) / gap if gap > 0 else None)
                             for run in ("finetune", "finetune_small_gate", "finetune_new_only")},
        }
    first = next(iter(evals.values()))
    return {
        "command": "python -m experiments.hf_finetune.run " + " ".join(sys.argv[1:]),
        "model": LLAMA, "memory_layer": MEMORY_LAYER,
        "settings": {k: v for k, v in vars(args).items() if k not in ("command", "phase", "runs", "eval_name")},
        "eval": {"documents": first["documents"], "bytes": first["bytes"], "split": "test"},
        "bits_per_byte": bpb,
        "gaps": gaps,
        "runs": {name: {k: v for k, v in info.items() if k != "train_config"} for name, info in runs.items()},
        "wall_clock_seconds": seconds,
    }


def table(result: dict[str, Any]) -> str:
    bpb, s = result["bits_per_byte"], result["settings"]
    steps = {"P": str(s["pretrain_steps"]), "P + E": f"{s['pretrain_steps']} + {s['extra_steps']}"}
    lines = ["| model | steps | bits per byte | same weights, memory off |", "|---|---|---|---|"]
    for run, label, budget in ROWS:
        on, off = bpb[run].get("on"), bpb[run]["off"]
        lines.append(f"| {label} | {steps[budget]} | {(off if on is None else on):.4f} | "
                     f"{'' if on is None else f'{off:.4f}'} |")
    lines.append("")
    for reference, gap in result["gaps"].items():
        closed = ", ".join(f"{run} {'n/a' if share is None else f'{100 * share:.0f}%'}"
                           for run, share in gap["share_closed"].items())
        lines.append(f"gap (a) - ({'c' if reference == 'scratch' else 'c2'}): {gap['gap_a_minus_c']:+.4f} bits per "
                     f"byte; share of it closed: {closed}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("command", choices=("all", "phase", "table"))
    parser.add_argument("--phase", choices=(*PHASES, "eval"))
    parser.add_argument("--runs", default="", help="(eval phase) comma-separated run names")
    parser.add_argument("--eval-name", default="eval", help="(eval phase) name of its JSON file")
    parser.add_argument("--root", default="runs/hf_finetune")
    parser.add_argument("--pretrain-steps", type=int, default=1200)
    parser.add_argument("--extra-steps", type=int, default=60)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--memory", type=int, default=2048, help="kNN memory per stream (training and evaluation)")
    parser.add_argument("--knn-index", default="flat", help="memory search: 'flat' (faiss, exact) or 'exact' (torch)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate from scratch (cosine to 10%%)")
    parser.add_argument("--extra-lr", type=float, default=5e-4, help="constant learning rate of (a) and (b)")
    parser.add_argument("--new-only-lr", type=float, default=1e-2, help="learning rate of (b2), new parameters only")
    parser.add_argument("--gate-bias-init", type=float, default=0.0,
                        help="initial gate bias of the fine-tuned models (b), (b2) (0: sigmoid 0.5, as (c))")
    parser.add_argument("--small-gate-bias-init", type=float, default=-3.0, help="initial gate bias of (b')")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-docs", type=int, default=12, help="the N longest test documents")
    parser.add_argument("--eval-doc-bytes", type=int, default=32768, help="each cut to this many bytes")
    parser.add_argument("--eval-batch-size", type=int, default=4)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.command == "all":
        run_all(args)
    elif args.command == "table":
        print(table(json.loads((Path(args.root) / "results.json").read_text())))
    else:
        if args.phase == "eval":
            info = evaluate_runs(args)
            (Path(args.root) / f"{args.eval_name}.json").write_text(json.dumps(info, indent=2) + "\n")
        else:
            phase(args)


if __name__ == "__main__":
    main()
