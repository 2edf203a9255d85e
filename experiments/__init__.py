"""Experiments built on the core package: they import ``memorizing_transformers_pytorch``, never the reverse.

    recall/  the synthetic key -> value recall task: its data source, evaluation, hand-wired model, sweeps
    names/   the names metric on real code: recall of names last seen far back

``python -m experiments`` is the core command line with the recall data source registered and the ``recall``
and ``names`` subcommands added.
"""
