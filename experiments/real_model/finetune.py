"""Fine-tunes a pretrained model with its kNN memory on.

``--train memory`` trains only the new parameters (per layer and head: the bias ``b_h`` of the memories' share
and the scale of their logits; the paper's §4.5 setting); ``--train all`` trains every weight. The data is the
standard library's train split in the model's own tokens (its test split holds the evaluation's code document).

    python -m experiments.real_model.finetune --model runs/real_model/smollm2 --train memory --minutes 20 \\
        --out runs/real_model/ft_memory

Writes the run (metrics.jsonl, checkpoints; ``--resume`` continues it) under OUT/run and the model under OUT/model.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from memorizing_transformers_pytorch.hf import MemorizingHFModel
from memorizing_transformers_pytorch.train import TrainConfig, Trainer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a model folder (with its tokenizer) or a GGUF file")
    parser.add_argument("--train", choices=("memory", "all"), required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--minutes", type=float, default=20.0, help="training time budget")
    parser.add_argument("--steps", type=int, default=400, help="the schedule's length (training stops at --minutes)")
    parser.add_argument("--lr", type=float, default=None, help="default: 1e-2 (memory) or 2e-5 (all)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-memories", type=int, default=8192)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    model = MemorizingHFModel.from_pretrained(args.model)
    if args.train == "memory":
        model.train_only_memory_parameters()
    tokenizer_dir = Path(args.out) / "tokenizer"
    model.tokenizer.save_pretrained(tokenizer_dir)  # the training data's tokenizer (a GGUF file has no folder)
    config = TrainConfig(data="stdlib", tokenizer=str(tokenizer_dir), run_dir=str(Path(args.out) / "run"),
                         seq_len=args.seq_len, batch_size=1, steps=args.steps,
                         lr=args.lr or (1e-2 if args.train == "memory" else 2e-5), warmup_steps=10,
                         weight_decay=0.0, checkpoint_every=25, log_every=5, max_minutes=args.minutes)
    model.config = dataclasses.replace(model.config, max_knn_memories=args.max_memories)
    trainer = Trainer(model.config, config, model=model)
    if args.resume:
        trainer.restore()
    summary = trainer.run()
    folder = model.save_pretrained(Path(args.out) / "model", train_config=config.to_dict())
    print(json.dumps({"step": summary["step"], "model": str(folder)}))


if __name__ == "__main__":
    main()
