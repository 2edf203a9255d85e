"""Passkey retrieval, the standard long-context test (the format of Landmark Attention and LongLLaMA).

A document is filler sentences repeated, with one passkey sentence at a chosen depth, then the question::

    The grass is green. The sky is blue. ... The pass key is 71432. Remember it. 71432 is the pass key.
    The grass is green. ... What is the pass key? The pass key is 71432.

The model is right when its argmax is right at every digit of the final answer given the true bytes before
it, which is exactly when greedy generation after "The pass key is" writes the passkey.

``passkey_document(length, depth, rng)`` makes one evaluation document; the data source
``passkey[:SPEC]`` (``PasskeyTask``) makes training documents of log-uniform length and uniform depth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from memorizing_transformers_pytorch.data import SPLITS, Source, check_split, register_source
from memorizing_transformers_pytorch.longbench.tasks import PASSKEY_FILLER, PASSKEY_QUESTION, passkey_statement

from ..spec import parse_spec

__all__ = ["PasskeyTask", "PasskeyDocument", "passkey_document", "passkey_documents", "FILLER", "QUESTION"]

# the suite's passkey task (memorizing_transformers_pytorch/longbench), as bytes for the byte-level experiment
FILLER = tuple(sentence.encode() for sentence in PASSKEY_FILLER)
QUESTION = PASSKEY_QUESTION.encode()


def _statement(key: bytes) -> bytes:
    return passkey_statement(key.decode()).encode()


@dataclass(frozen=True)
class PasskeyDocument:
    tokens: np.ndarray  # uint8, without the start-of-document marker
    answer_start: int  # offset in ``tokens`` of the answer's first digit
    key_start: int  # offset of the passkey's first mention
    digits: int


def passkey_document(length: int, depth: float, rng: np.random.Generator, digits: int = 5) -> PasskeyDocument:
    """About ``length`` bytes (whole filler sentences; at most one sentence off): filler, the passkey
    statement after ``depth`` (0..1) of the filler sentences, more filler, the question and the answer."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey: depth must be in [0, 1], got {depth}")
    if digits < 1:
        raise ValueError(f"passkey: digits must be >= 1, got {digits}")
    key = str(int(rng.integers(10 ** (digits - 1), 10**digits))).encode()
    statement, tail = _statement(key), QUESTION + key + b"."
    block = sum(len(s) for s in FILLER) / len(FILLER)
    sentences = max(0, round((length - len(statement) - len(tail)) / block))
    if length < len(statement) + len(tail):
        raise ValueError(f"passkey: length must be >= {len(statement) + len(tail)} bytes, got {length}")
    before = round(depth * sentences)
    filler = [FILLER[i % len(FILLER)] for i in range(sentences)]
    head = b"".join(filler[:before])
    text = head + statement + b"".join(filler[before:]) + tail
    return PasskeyDocument(np.frombuffer(text, dtype=np.uint8).copy(), len(text) - 1 - digits,
                           len(head) + len(b"The pass key is "), digits)


@dataclass(frozen=True)
class PasskeyTask:
    """Training documents: ``min_length``..``max_length`` bytes (log-uniform), depth uniform in [0, 1].

    Spec: ``passkey`` or ``passkey:min_length=384,max_length=2048,documents=4000,digits=5,seed=0``.
    """

    min_length: int = 384
    max_length: int = 2048
    digits: int = 5
    documents: int = 4000
    seed: int = 0

    def __post_init__(self) -> None:
        if not 200 <= self.min_length <= self.max_length:
            raise ValueError(f"passkey task: need 200 <= min_length <= max_length, got {self.min_length}, "
                             f"{self.max_length}")
        for name in ("digits", "documents"):
            if getattr(self, name) < 1:
                raise ValueError(f"passkey task: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def parse(cls, spec: str) -> PasskeyTask:
        return parse_spec(cls, "passkey", spec)


def passkey_documents(task: PasskeyTask, split: str) -> list[np.ndarray]:
    """``task.documents`` training documents for ``split``."""
    check_split(split)
    rng = np.random.default_rng([task.seed, SPLITS.index(split), 7])
    low, high = np.log(task.min_length), np.log(task.max_length)
    return [passkey_document(int(np.exp(rng.uniform(low, high))), float(rng.uniform()), rng, task.digits).tokens
            for _ in range(task.documents)]


register_source("passkey", Source(documents=lambda argument, split: passkey_documents(PasskeyTask.parse(argument), split),
                                  help="passkey[:SPEC], passkey retrieval documents (experiments/passkey)"))
