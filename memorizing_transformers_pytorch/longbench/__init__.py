"""A long-context benchmark suite that runs offline: passkey, needles, variable tracking, aggregation and
key-value retrieval, on any of our checkpoints or a Hugging Face / GGUF model, with memory on and off.

    tasks.py   the generators (``make_sample``) and the training documents
    score.py   exact match and recall
    runner.py  the models under test, the run loop and its results.json, the summary table
    plot.py    the heat-map (length x depth)

Command line: ``memorizing-transformers longbench --checkpoint X --tasks ... --lengths ... --depths ...``.
"""

from .runner import ModelUnderTest, format_table, load_model_under_test, run, summarize
from .score import score
from .tasks import TASKS, Sample, make_sample, training_documents

__all__ = ["TASKS", "Sample", "make_sample", "training_documents", "score", "ModelUnderTest", "load_model_under_test",
           "run", "summarize", "format_table"]
