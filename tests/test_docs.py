"""Every result file a doc shows is there, and every file in docs/results/ is cited by a doc."""

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "experiments").glob("**/README.md"))]


def test_every_file_in_docs_results_is_cited_by_a_doc():
    text = "\n".join(doc.read_text() for doc in DOCS)
    uncited = [path.name for path in sorted((ROOT / "docs" / "results").iterdir()) if path.name not in text]
    assert uncited == [], "cite these in a doc, or move them to dev/results/ (the dev log's folder)"


def test_every_docs_results_path_a_doc_names_exists():
    missing = []
    for doc in DOCS:
        for name in re.findall(r"docs/results/([\w.\-]+\.(?:jsonl|json|png|txt))\b", doc.read_text()):
            if not (ROOT / "docs" / "results" / name).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert missing == []
