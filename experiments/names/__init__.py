"""The names metric on real code (``python -m experiments names``) and its demo (``demo.sh``)."""

from .metric import MIN_NAME_LENGTH, find_long_range_names, name_mentions, name_recall

__all__ = ["MIN_NAME_LENGTH", "find_long_range_names", "name_mentions", "name_recall"]
