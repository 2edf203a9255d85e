"""``python -m experiments {train,eval,demo,generate,recall,names,passkey}``: the core CLI plus the experiments."""

import argparse

from memorizing_transformers_pytorch.cli import main

from .names.cli import add_names_command
from .passkey.cli import add_passkey_command
from .recall.cli import add_recall_command


def add_commands(sub: argparse._SubParsersAction) -> None:
    add_recall_command(sub)
    add_names_command(sub)
    add_passkey_command(sub)


if __name__ == "__main__":
    main(extend=add_commands)
