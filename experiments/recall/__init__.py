"""The synthetic long-range recall task (``--data recall[:SPEC]``): key -> value bindings queried far later.

    task.py      the task, its documents, and the ``recall`` data source
    evaluate.py  exact-match recall by distance, and its plot
    wired.py     a model wired by hand to look keys up (checks retrieval end to end)
    cli.py       ``python -m experiments recall``
    sweep.py     trains and compares variants (memory, XL-only, plain, ablations)
"""

from .evaluate import document_stream, evaluate_recall, plot_recall
from .task import RecallDocument, RecallTask, recall_document, recall_documents, training_document
from .wired import wired_lookup_model

__all__ = ["RecallTask", "RecallDocument", "recall_document", "recall_documents", "training_document",
           "document_stream", "evaluate_recall", "plot_recall", "wired_lookup_model"]
