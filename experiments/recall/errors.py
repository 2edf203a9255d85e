"""Where does a trained recall model go wrong? Classifies its wrong value bytes.

For each byte of each queried value (teacher-forced: the true bytes before it are
given), the model's argmax is either right or wrong. A wrong byte is counted as

- ``repeat``: the value byte just before it, written again (the copy stayed one
  position behind: the lookup matched the token itself rather than the one before);
- ``context-1``: a byte that followed another occurrence of the same previous byte
  in the document (the lookup matched only one byte of context, and found another
  place); likewise ``context-2`` for the same two previous bytes;
- ``end``: the statement's end, ``;``, a byte too early;
- none of these (a byte may count as both ``repeat`` and ``context-1``).

    python experiments/recall/errors.py runs/recall/memory
    python experiments/recall/errors.py runs/recall/memory --data recall:value_len=4 --distances 88,2048
    python -m experiments.recall.errors ...      # the same

Prints a table per distance; ``--json`` writes the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]  # the repository root
sys.path.insert(0, str(ROOT))

from experiments.recall import RecallTask, document_stream, recall_document  # noqa: E402
from memorizing_transformers_pytorch.checkpoint import load_model  # noqa: E402
from memorizing_transformers_pytorch.evaluate import read_stream, segments  # noqa: E402


def followers(tokens: np.ndarray, end: int, context: int, skip: int) -> set[int]:
    """Bytes that follow an earlier occurrence (before ``end``) of the ``context`` bytes before ``end``,
    other than the one at ``skip`` (the binding's own byte)."""
    want = tokens[end - context : end].tobytes()
    return {int(tokens[j]) for j in range(context, end) if j != skip and tokens[j - context : j].tobytes() == want}


@torch.no_grad()
def classify(model, task: RecallTask, distance: int, documents: int, memory_size: int, seq_len: int) -> dict:
    rng = np.random.default_rng([1234, distance])  # the documents of evaluate_recall's default seed
    docs = [recall_document(task, distance, rng) for _ in range(documents)]
    stream = document_stream(docs, seq_len)
    argmax = [logits.argmax(-1) for _, logits in read_stream(model, segments(stream, seq_len), memory_size=memory_size)]
    predicted = torch.cat(argmax, dim=1).numpy()  # predicted[row, i] is the guess for document byte i
    kinds = ("bytes", "wrong", "repeat", "context-1", "context-2", "end")
    counts = {kind: [0] * task.value_len for kind in kinds}
    for row, doc in enumerate(docs):
        t = doc.tokens
        for value_start, back in zip(doc.value_starts, doc.distances):
            for i in range(task.value_len):
                at, guess = int(value_start) + i, int(predicted[row, int(value_start) + i])
                counts["bytes"][i] += 1
                if guess == t[at]:
                    continue
                counts["wrong"][i] += 1
                source = at - int(back)  # the same byte in the binding
                counts["repeat"][i] += bool(i and guess == t[source - 1])
                counts["end"][i] += guess == ord(";")
                for n in (1, 2):
                    counts[f"context-{n}"][i] += guess in followers(t, at, n, skip=source)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a trained recall model's run folder")
    parser.add_argument("--data", default="recall", help="the recall task (value_len etc.), as in training")
    parser.add_argument("--distances", default="88,2048")
    parser.add_argument("--documents", type=int, default=16, help="documents per distance (8 queries each)")
    parser.add_argument("--memory-size", type=int, default=16384)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--json", help="write the counts here")
    args = parser.parse_args()
    model = load_model(args.run_dir).eval()
    task = RecallTask.parse(args.data)
    results = {}
    for distance in (int(d) for d in args.distances.split(",")):
        counts = classify(model, task, distance, args.documents, args.memory_size, args.seq_len)
        results[str(distance)] = counts
        print(f"\ndistance {distance}: wrong bytes, and how many of them are each kind")
        print("| value byte | accuracy | wrong | repeat | context-1 | context-2 | end |\n|---|---|---|---|---|---|---|")
        for i in range(task.value_len):
            accuracy = 1 - counts["wrong"][i] / counts["bytes"][i]
            print(f"| {i} | {accuracy:.3f} | {counts['wrong'][i]} | {counts['repeat'][i]} | "
                  f"{counts['context-1'][i]} | {counts['context-2'][i]} | {counts['end'][i]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"run_dir": args.run_dir, "data": args.data, "by_distance": results},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()
