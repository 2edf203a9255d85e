"""How much does a trained recall model's lookup head attend to its kNN memory?

At each query's first value byte (the lookup proper), takes the memorizing layer's
head with the largest learned temperature (the lookup head) and reports:

- the share of its softmax weight that goes to the retrieved memories (joint gate);
- the median margin of the best memory logit over the best local logit;
- the argmax accuracy at that byte.

``--memory-bias far`` turns on the model option ``memory_rel_pos_bias`` at evaluation
(every retrieved memory's logit gets the relative position bias of the farthest bucket),
for a model trained without it: what the untrained change does to the lookup.

    python experiments/recall/attention_probe.py runs/recall/memory --data recall:value_len=4 --k 1
    python experiments/recall/attention_probe.py runs/recall/memory --data recall:value_len=4 --k 1 --memory-bias far
    python -m experiments.recall.attention_probe ...      # the same

It records the joint softmax's logits by wrapping ``knn_attention.joint_attention`` (which the
joint gate calls) while the documents are read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
sys.path.insert(0, str(ROOT))

from experiments.recall import RecallTask, document_stream, recall_document  # noqa: E402
from memorizing_transformers_pytorch import knn_attention as attention_module  # noqa: E402
from memorizing_transformers_pytorch.checkpoint import load_model  # noqa: E402
from memorizing_transformers_pytorch.evaluate import read_stream, segments  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--data", default="recall", help="the recall task, as in training")
    parser.add_argument("--distance", type=int, default=2048)
    parser.add_argument("--documents", type=int, default=16)
    parser.add_argument("--k", type=int, default=None, help="neighbours (default: the model's)")
    parser.add_argument("--memory-bias", choices=("none", "far"), default="none")
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    search = {"max_knn_memories": 16384} | ({} if args.k is None else {"num_retrieved_memories": args.k})
    model = load_model(args.run_dir, **search).eval()
    if model.config.knn_gate != "joint" or len(model.config.memorizing_layers) != 1:
        raise SystemExit("this probe reads models with one memorizing layer and the joint gate")
    if args.memory_bias == "far":
        model.config = dataclasses.replace(model.config, memory_rel_pos_bias=True)
    attention = model.layers[model.config.memorizing_layers[0] - 1].attn
    head = int(attention.log_scale.detach().flatten().argmax())

    captured: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    joint = attention_module.joint_attention

    def recording(q_scaled, keys, values, attn_mask, reads, bias, dropout_p):
        """The logits of the joint softmax (local, and retrieved with their bias), for the lookup head."""
        group = q_scaled.shape[1] // keys.shape[1]
        local = q_scaled @ keys.repeat_interleave(group, dim=1).transpose(-1, -2) + attn_mask
        memory = torch.einsum("bhnd,bhnkd->bhnk", q_scaled, reads.keys)
        memory = (memory + (0 if bias is None else bias)).masked_fill(~reads.mask, float("-inf"))
        captured.append((local[:, head], memory[:, head]))
        return joint(q_scaled, keys, values, attn_mask, reads, bias, dropout_p)

    task = RecallTask.parse(args.data)
    rng = np.random.default_rng([1234, args.distance])  # evaluate_recall's documents
    docs = [recall_document(task, args.distance, rng) for _ in range(args.documents)]
    stream = document_stream(docs, args.seq_len)
    argmax = []
    # the joint gate calls the module's _joint_attention: record through it while the documents are read
    attention_module.joint_attention = recording
    try:
        for _, logits in read_stream(model, segments(stream, args.seq_len), memory_size=None):
            argmax.append(logits.argmax(-1))
    finally:
        attention_module.joint_attention = joint
    predicted = torch.cat(argmax, dim=1).numpy()
    shares, margins, right = [], [], []
    for row, doc in enumerate(docs):
        for value_start in doc.value_starts:
            segment, i = divmod(int(value_start), args.seq_len)  # byte v is predicted at input position v
            local, memory = captured[segment][0][row, i], captured[segment][1][row, i]
            weights = torch.cat((local, memory)).softmax(-1)
            shares.append(float(weights[len(local):].sum()))
            margins.append(float(memory.max() - local.max()))
            right.append(bool(predicted[row, value_start] == doc.tokens[value_start]))
    shares, margins, right = np.array(shares), np.array(margins), np.array(right)
    print(f"lookup head {head} (temperature {attention.log_scale.detach().flatten()[head].exp():.1f}), distance "
          f"{args.distance}, k = {model.config.num_retrieved_memories}, memory bias {args.memory_bias}, "
          f"{len(right)} queries:")
    print(f"  value byte 0 right: {right.mean():.3f}")
    print(f"  share of attention on memory: {shares.mean():.3f} (right {shares[right].mean():.3f}, "
          f"wrong {shares[~right].mean() if (~right).any() else float('nan'):.3f})")
    print(f"  best memory logit - best local logit, median: {np.median(margins):.2f}")


if __name__ == "__main__":
    main()
