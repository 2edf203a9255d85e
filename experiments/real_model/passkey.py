"""Passkey retrieval by a pretrained model far beyond its trained context, in the passkey experiment's format
(``experiments/passkey/task.py``): filler sentences, the passkey at a chosen depth, the question at the end.

Settings:
    ``plain_W``: the plain model on the prompt's last W tokens (its context; W=8192 is the most it was trained
        for). Reading the prompt in independent windows of W gives the same answer or a worse one: only the last
        window reaches the question.
    ``memory_S``: the whole prompt read in segments of S tokens into the kNN memory (sized to hold it all), then
        greedy decoding (``generate``).

    python -m experiments.real_model.passkey --model runs/real_model/smollm2 --label untrained \\
        --lengths 4096,16384,32768,65536 --depths 0.1,0.5,0.9 --settings plain_8192,memory_512

Exact match: the first digits decoded are the passkey. Each sample is merged into ``--out`` when it is done.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from experiments.passkey.task import passkey_document
from memorizing_transformers_pytorch.hf import MemorizingHFModel

from .longdoc import merge


def prompt_ids(model: MemorizingHFModel, tokens: int, depth: float, rng: np.random.Generator,
               bytes_per_token: float) -> tuple[list[int], str]:
    """A passkey prompt of about ``tokens`` tokens (everything before the answer's digits) and its key."""
    document = passkey_document(int(tokens * bytes_per_token), depth, rng)
    text = bytes(document.tokens).decode()
    key = text[document.answer_start : document.answer_start + document.digits]
    prompt = text[: document.answer_start].rstrip(" ")
    return model.tokenizer(prompt, add_special_tokens=False)["input_ids"], key


def answer(model: MemorizingHFModel, ids: list[int], setting: str) -> str:
    kind, size = setting.rsplit("_", 1)
    size = int(size)
    if kind == "plain":
        prompt = torch.tensor([ids[-size:]])
        out = model.generate(prompt, max_new_tokens=8, seq_len=size, temperature=0.0, use_knn_memory=False)
    elif kind == "memory":
        capacity = 1024 * (len(ids) // 1024 + 1)
        out = model.generate(torch.tensor([ids]), max_new_tokens=8, seq_len=size, temperature=0.0, max_memories=capacity)
    else:
        raise ValueError(f"unknown setting {setting!r}: expected plain_W or memory_S")
    return model.tokenizer.decode(out.tokens[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--label", required=True)
    parser.add_argument("--lengths", default="4096,16384")
    parser.add_argument("--depths", default="0.1,0.5,0.9")
    parser.add_argument("--settings", default="plain_8192,memory_512")
    parser.add_argument("--samples", type=int, default=1, help="prompts per length and depth")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/results/real_model_passkey.json")
    args = parser.parse_args(argv)
    model = MemorizingHFModel.from_pretrained(args.model).eval()
    calibration = prompt_ids(model, 2048, 0.5, np.random.default_rng(12345), 4.0)[0]
    bytes_per_token = 4.0 * 2048 / len(calibration)
    for length in (int(x) for x in args.lengths.split(",")):
        for depth in (float(x) for x in args.depths.split(",")):
            for sample in range(args.samples):
                rng = np.random.default_rng([args.seed, length, int(depth * 1000), sample])
                ids, key = prompt_ids(model, length, depth, rng, bytes_per_token)
                for setting in args.settings.split(","):
                    started = time.perf_counter()
                    got = answer(model, ids, setting)
                    seconds = time.perf_counter() - started
                    correct = got.strip().startswith(key)
                    merge(Path(args.out), ["results", args.label, setting, str(length), f"{depth}:{sample}"],
                          {"prompt_tokens": len(ids), "depth": depth, "expected": key, "got": got, "correct": correct,
                           "seconds": seconds})
                    print(f"{args.label:10s} {setting:12s} {length:6d} depth {depth:.1f} #{sample}: "
                          f"{'ok ' if correct else 'MISS'} {key} -> {got!r} ({len(ids)} tokens, {seconds:.0f}s)",
                          flush=True)


if __name__ == "__main__":
    main()
