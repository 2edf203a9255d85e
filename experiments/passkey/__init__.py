"""Passkey retrieval (``--data passkey[:SPEC]``): a number hidden in filler text, asked for at the end.

    task.py      the documents and the ``passkey`` data source
    evaluate.py  exact-match accuracy by length and depth, and its plot
    cli.py       ``python -m experiments passkey``
    run.sh       trains the memory model and the baselines, then evaluates them
"""

from .evaluate import evaluate_passkey, plot_passkey
from .task import PasskeyDocument, PasskeyTask, passkey_document, passkey_documents

__all__ = ["PasskeyTask", "PasskeyDocument", "passkey_document", "passkey_documents", "evaluate_passkey",
           "plot_passkey"]
