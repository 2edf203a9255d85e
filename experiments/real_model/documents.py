"""The held-out long documents of the real-model experiments: code (the standard library's longest test file),
technical prose (the Python reference manual's data model chapter) and TeX (PARI/GP's tutorial).

The prose and TeX come from Debian's ``python3.11-doc`` and ``pari-doc``: ``bash experiments/real_model/fetch_docs.sh``
extracts them into ``runs/real_model/docs/extracted``.
"""

from __future__ import annotations

from pathlib import Path

from memorizing_transformers_pytorch.data import load_documents

DOCS_DIR = Path("runs/real_model/docs/extracted")
FILES = {
    "prose": "usr/share/doc/python3.11/html/_sources/reference/datamodel.rst.txt",
    "tex": "usr/share/pari/doc/tutorial.tex",
}
NAMES = ("code", "prose", "tex")


def document_text(name: str, docs_dir: str | Path = DOCS_DIR) -> str:
    """The text of document ``name`` (one of ``NAMES``).

    Raises:
        ValueError: an unknown name. FileNotFoundError: the Debian documents were not fetched.
    """
    if name == "code":
        longest = max(load_documents("stdlib", "test", progress=False), key=len)
        return bytes(longest).decode("utf-8", errors="replace")
    if name not in FILES:
        raise ValueError(f"unknown document {name!r}: expected one of {NAMES}")
    path = Path(docs_dir) / FILES[name]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run bash experiments/real_model/fetch_docs.sh first")
    return path.read_text(encoding="utf-8", errors="replace")
