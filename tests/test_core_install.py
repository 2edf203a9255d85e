"""A core-only install (torch, numpy, faiss): the model, its memory and generation work, and a command that needs
an extra says which one, in one line. The extras' packages are hidden from a fresh interpreter."""

import subprocess
import sys
from pathlib import Path

from memorizing_transformers_pytorch.cli import EXTRAS

ROOT = Path(__file__).parent.parent

HIDE_EXTRAS = f"""
import importlib.abc, sys
HIDDEN = {sorted(EXTRAS)!r} + ["hypothesis"]

class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Hide())
"""


def run(code: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HIDE_EXTRAS + code], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_the_model_memory_and_generation_need_no_extra():
    done = run("""
import torch
from memorizing_transformers_pytorch import MemorizingTransformer
model = MemorizingTransformer(num_tokens=64, dim=32, depth=2, heads=2, dim_head=16, memorizing_layers=(2,),
                              max_knn_memories=64, num_retrieved_memories=4, xl_max_memories=8)
data = torch.randint(0, 64, (2, 16))
knn_memories = model.create_knn_memories(batch_size=2)
logits, _ = model(data, knn_memories=knn_memories)
state = model.new_state(batch_size=2, seq_len=8)
logits, state = model.step(data, state)
out = model.generate(data[:, :5], max_new_tokens=3, seq_len=8, temperature=0)
assert out.tokens.shape == (2, 3)
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN))
""")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok []"


def test_a_command_that_needs_an_extra_names_it_in_one_line(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello world\n" * 50)
    done = run(f"""
from memorizing_transformers_pytorch.cli import main
main(["train", "--data", {str(corpus)!r}, "--run-dir", {str(tmp_path / "run")!r}, "--steps", "1", "--preset", "tiny"])
""")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "[train] extra" in lines[0] and "pip install" in lines[0], done.stderr
