"""The long-context tasks: each makes a prompt of a requested length with the facts to find at a requested depth.

Tasks (written here from the published definitions of passkey, RULER's needle / variable-tracking / common-words
tasks and ∞Bench's key-value retrieval; no code of theirs is used):

    passkey            one pass key in filler, asked for at the end
    niah_single        one needle "One of the special magic numbers for KEY is: VALUE."
    niah_multikey      the needle and 3 distractor needles with other keys
    niah_multivalue    4 needles with the same key; all 4 values must be returned
    niah_multiquery    4 needles with 4 keys, all asked at once
    variable_tracking  a chain "VAR A = 12345." "VAR B = VAR A." ... spread through the haystack; name them all
    common_words       a numbered list of words: return the 10 that occur most often
    kv_retrieval       a JSON object of UUID-to-UUID pairs: return one key's value

``make_sample(task, length, depth, seed, count)`` builds one ``Sample``: ``count(text)`` measures text in the
model's units (tokens of its tokenizer, or bytes), and the prompt (context and question) is made as close to
``length`` units as whole haystack pieces allow (within 2% from 1K units up). The facts are inserted between
haystack pieces (sentences, lines or list items), the first one at ``depth`` (0 = the start, 1 = the end).
Everything is deterministic for a seed; training documents (``training_documents``) use seeds disjoint from
evaluation's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import SPLITS, Source, check_split, register_source, stdlib_documents

__all__ = ["TASKS", "HAYSTACKS", "Sample", "make_sample", "haystack_pieces", "check_task", "uses_depth",
           "PASSKEY_FILLER", "passkey_statement", "PASSKEY_QUESTION", "training_documents"]

Count = Callable[[str], int]

# ------------------------------------------------------------------------------------------------ vocabularies
PASSKEY_FILLER = ("The grass is green. ", "The sky is blue. ", "The sun is yellow. ", "Here we go. ",
                  "There and back again. ")
PASSKEY_QUESTION = "What is the pass key? The pass key is "

ADJECTIVES = ("amber", "ancient", "bitter", "bold", "brave", "bright", "broad", "calm", "clever", "cold", "crimson",
              "curious", "dark", "deep", "distant", "dusty", "eager", "early", "empty", "fierce", "frozen", "gentle",
              "giant", "golden", "grand", "green", "hidden", "hollow", "humble", "icy", "jolly", "kind", "late",
              "lazy", "little", "lively", "lonely", "loud", "lucky", "marble", "mighty", "misty", "narrow", "noble",
              "odd", "old", "pale", "patient", "plain", "polite", "proud", "quick", "quiet", "rapid", "rare", "rough",
              "round", "royal", "rusty", "scarlet", "shiny", "silent", "silver", "simple", "sleepy", "slow", "smooth",
              "soft", "solid", "sour", "steady", "stormy", "strange", "sturdy", "sunny", "swift", "tall", "tender",
              "tiny", "velvet", "violet", "warm", "wild", "wise", "wooden", "young")
NOUNS = ("anchor", "apple", "arrow", "badger", "banjo", "barrel", "beacon", "bell", "bison", "blanket", "bridge",
         "bucket", "button", "cactus", "camel", "candle", "canyon", "castle", "cellar", "cherry", "cloud", "comet",
         "compass", "cottage", "crystal", "desert", "dolphin", "dragon", "drum", "eagle", "engine", "falcon", "feather",
         "ferry", "fiddle", "forest", "fountain", "garden", "glacier", "harbor", "hammer", "helmet", "island",
         "jacket", "kettle", "ladder", "lantern", "lemon", "lighthouse", "meadow", "mirror", "mountain", "needle",
         "oasis", "orchard", "otter", "paddle", "parrot", "pebble", "pepper", "piano", "pillow", "planet", "pocket",
         "quarry", "rabbit", "river", "rocket", "saddle", "salmon", "shadow", "signal", "spider", "statue", "stone",
         "teapot", "thunder", "tiger", "tower", "trumpet", "tunnel", "valley", "violin", "wagon", "walnut", "whistle",
         "window", "wizard", "zebra")
CONSONANTS = "bdfghklmnprstvz"
VOWELS = "aeiou"

VALUE_KINDS = ("numbers", "words", "uuids")
SINGULAR = {"numbers": "number", "words": "word", "uuids": "uuid"}


def _word_key(rng: np.random.Generator) -> str:
    return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"


def _uuid(rng: np.random.Generator) -> str:
    digits = "".join(f"{b:02x}" for b in rng.integers(0, 256, 16))
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{'89ab'[int(digits[16], 16) % 4]}{digits[17:20]}-{digits[20:32]}"


def _value(kind: str, rng: np.random.Generator) -> str:
    if kind == "numbers":
        return str(int(rng.integers(1_000_000, 10_000_000)))
    if kind == "words":
        return _word_key(rng)
    return _uuid(rng)


def _distinct(make: Callable[[], str], n: int, avoid: Sequence[str] = ()) -> list[str]:
    """``n`` distinct values from ``make()``, none in ``avoid``."""
    out: list[str] = []
    while len(out) < n:
        value = make()
        if value not in out and value not in avoid:
            out.append(value)
    return out


def _pseudo_word(rng: np.random.Generator) -> str:
    return "".join(CONSONANTS[rng.integers(len(CONSONANTS))] + VOWELS[rng.integers(len(VOWELS))]
                   for _ in range(int(rng.integers(2, 4))))


# ------------------------------------------------------------------------------------------------ haystacks
HAYSTACKS = {
    "noise": "the passkey filler sentences repeated (\"The grass is green. The sky is blue. ...\")",
    "stdlib": "lines of the Python standard library's test-split source files (real code and docstrings)",
    "PATH": "lines of a text file, or of the .txt/.md/.py/.tex files of a folder, in name order",
}


def haystack_pieces(haystack: str, seed: int) -> _Pieces:
    """The haystack's pieces (sentences or lines, each with its separator).

    Raises:
        ValueError: a haystack without text.
        FileNotFoundError: a path that does not exist.
    """
    if haystack == "noise":
        return _Pieces(lambda n: [PASSKEY_FILLER[i % len(PASSKEY_FILLER)] for i in range(n)], 10**9, "noise")
    if haystack == "stdlib":
        documents = stdlib_documents("test")
        order = np.random.default_rng([seed, 17]).permutation(len(documents))
        texts = [bytes(documents[i]).decode("utf-8", errors="replace") for i in order]
        where = "the stdlib haystack (Python standard library, test split)"
    else:
        path = Path(haystack)
        if not path.exists():
            raise FileNotFoundError(f"haystack: no such file or folder: {haystack} (or use one of noise, stdlib)")
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md", ".py", ".tex", ".rst")) \
            if path.is_dir() else [path]
        texts = [p.read_bytes().decode("utf-8", errors="replace") for p in files]
        where = f"the haystack {haystack}"
    lines = [line for text in texts for line in text.splitlines(keepends=True) if line.strip()]
    if not lines:
        raise ValueError(f"{where} holds no text")

    return _Pieces(lambda n: lines[:n], len(lines), f"{where} holds {len(lines)} lines")


@dataclass(frozen=True)
class _Pieces:
    """``first(n)``: the first ``n`` (at most ``limit``) pieces of a haystack, each with its separator."""

    first: Callable[[int], list[str]]
    limit: int
    description: str


# ------------------------------------------------------------------------------------------------ samples
@dataclass(frozen=True)
class Sample:
    """One prompt: ``context + question`` is what the model reads; it should continue with the ``answers``.

    ``needle_offsets`` are the character offsets in ``context`` of the facts (first: the one placed at ``depth``).
    """

    task: str
    context: str
    question: str
    answers: tuple[str, ...]
    depth: float
    needle_offsets: tuple[int, ...]
    length: int  # requested, in the model's units
    units: int  # measured: count(context + question)

    @property
    def prompt(self) -> str:
        return self.context + self.question


@dataclass(frozen=True)
class _Layout:
    """What a task inserts: ``facts`` (text, depth) between ``pieces(n)``, then ``question``; ``head`` and ``tail``
    wrap the pieces (the JSON braces, say)."""

    facts: tuple[tuple[str, float], ...]
    question: str
    answers: tuple[str, ...]
    head: str = ""
    tail: str = ""


def _needle(key: str, value: str, kind: str) -> str:
    return f"One of the special magic {kind} for {key} is: {value}. "


def _list_of(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _niah(task: str, depth: float, rng: np.random.Generator, kind: str) -> _Layout:
    keys = _distinct(lambda: _word_key(rng), 4)
    values = _distinct(lambda: _value(kind, rng), 4)
    one = SINGULAR[kind]
    others = tuple(float(x) for x in rng.uniform(0, 1, 3))
    if task == "niah_single":
        facts, asked, answers = ((_needle(keys[0], values[0], kind), depth),), keys[:1], values[:1]
    elif task == "niah_multikey":  # distractors carry other keys
        facts = ((_needle(keys[0], values[0], kind), depth),
                 *((_needle(k, v, kind), d) for k, v, d in zip(keys[1:], values[1:], others)))
        asked, answers = keys[:1], values[:1]
    elif task == "niah_multivalue":
        facts = ((_needle(keys[0], values[0], kind), depth),
                 *((_needle(keys[0], v, kind), d) for v, d in zip(values[1:], others)))
        asked, answers = keys[:1], values
    else:  # niah_multiquery
        facts = ((_needle(keys[0], values[0], kind), depth),
                 *((_needle(k, v, kind), d) for k, v, d in zip(keys[1:], values[1:], others)))
        asked, answers = keys, values
    if len(answers) == 1:
        question = (f"\nWhat is the special magic {one} for {asked[0]} mentioned in the text above? "
                    f"The special magic {one} for {asked[0]} mentioned in the text above is:")
    else:
        question = (f"\nWhat are all the special magic {kind} for {_list_of(asked)} mentioned in the text above? "
                    f"The special magic {kind} for {_list_of(asked)} mentioned in the text above are:")
    return _Layout(tuple(facts), question, tuple(answers))


def _passkey(depth: float, rng: np.random.Generator) -> _Layout:
    key = str(int(rng.integers(10_000, 100_000)))
    return _Layout(((passkey_statement(key), depth),), "\n" + PASSKEY_QUESTION.rstrip(" ") + " ", (key,))


def passkey_statement(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def _variable_tracking(depth: float, rng: np.random.Generator, hops: int = 5) -> _Layout:
    names = _distinct(lambda: "".join(chr(65 + int(c)) for c in rng.integers(0, 26, 5)), hops)
    value = str(int(rng.integers(10_000, 100_000)))
    later = sorted(float(x) for x in rng.uniform(depth, 1.0, hops - 1))
    facts = [(f"VAR {names[0]} = {value}. ", depth)]
    facts += [(f"VAR {names[i]} = VAR {names[i - 1]}. ", d) for i, d in enumerate(later, start=1)]
    question = (f"\nFind all variables that are assigned the value {value} in the text above. Answer: the "
                f"variables assigned the value {value} are:")
    return _Layout(tuple(facts), question, tuple(names))


COMMON = 10  # common_words: how many words are common, and how often they and the rest occur
COMMON_REPEATS, RARE_REPEATS = 30, 3


def _common_words(rng: np.random.Generator, n: int) -> tuple[list[str], tuple[str, ...]]:
    """A shuffled list of 10 common words (30 times each) and ``n`` rare ones (3 times each); the common words."""
    words = _distinct(lambda: _pseudo_word(rng), COMMON + n)
    common, rare = words[:COMMON], words[COMMON:]
    items = np.array(common * COMMON_REPEATS + rare * RARE_REPEATS, dtype=object)
    items = items[rng.permutation(len(items))]
    return [f"{i}. {w}\n" for i, w in enumerate(items, start=1)], tuple(common)


def _layout(task: str, depth: float, rng: np.random.Generator, kind: str) -> _Layout:
    if task == "passkey":
        return _passkey(depth, rng)
    if task.startswith("niah_"):
        return _niah(task, depth, rng, kind)
    if task == "variable_tracking":
        return _variable_tracking(depth, rng)
    raise AssertionError(task)


TASKS = {
    "passkey": "one 5-digit pass key in the haystack; exact match",
    "niah_single": "one needle (key -> value); exact match",
    "niah_multikey": "the needle among 3 distractor needles with other keys; exact match",
    "niah_multivalue": "4 values for one key; recall of the 4",
    "niah_multiquery": "4 keys asked at once; recall of their 4 values",
    "variable_tracking": "a chain of 5 assignments of one value; recall of the 5 names",
    "common_words": "the 10 most frequent words of a long list (no haystack, no depth); recall of the 10",
    "kv_retrieval": "the value of one key of a JSON object of UUID pairs (no haystack); exact match",
}


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are: {', '.join(TASKS)}")
    return task


def uses_depth(task: str) -> bool:
    """False for common_words, whose facts are everywhere in the list."""
    return task != "common_words"


def _assemble(layout: _Layout, pieces: list[str]) -> tuple[str, tuple[int, ...]]:
    """The pieces with each fact inserted at the piece boundary nearest its depth (as a fraction of the pieces'
    characters); the facts' character offsets."""
    ends = np.cumsum([len(piece) for piece in pieces]) if pieces else np.zeros(0)
    total = float(ends[-1]) if len(ends) else 0.0
    boundaries = np.concatenate(([0.0], ends))
    slots: dict[int, list[int]] = {}
    for i, (_, depth) in enumerate(layout.facts):
        slots.setdefault(int(np.abs(boundaries - depth * total).argmin()), []).append(i)
    parts, offsets, at = [layout.head], [0] * len(layout.facts), len(layout.head)
    for position in range(len(pieces) + 1):
        for i in slots.get(position, ()):
            offsets[i] = at
            parts.append(layout.facts[i][0])
            at += len(layout.facts[i][0])
        if position < len(pieces):
            parts.append(pieces[position])
            at += len(pieces[position])
    parts.append(layout.tail)
    return "".join(parts), tuple(offsets)


Build = Callable[[int], tuple[str, str, tuple[str, ...], tuple[int, ...]]]


def _builder(task: str, depth: float, seed: int, haystack: str, kind: str) -> tuple[Build, _Pieces | None]:
    """``build(n)``: (context, question, answers, offsets) with ``n`` haystack pieces, the same facts for every
    ``n``; and the haystack (None for the tasks that make their own pieces)."""
    rng_seed = [seed, sorted(TASKS).index(task), int(round(depth * 1000))]
    if task == "common_words":
        def build(n: int) -> tuple[str, str, tuple[str, ...], tuple[int, ...]]:
            items, common = _common_words(np.random.default_rng(rng_seed), n)
            head = "Below is a numbered list of words. Some of them occur far more often than the others.\n"
            question = (f"\nWhat are the {COMMON} most common words in the list above? Answer: the {COMMON} most "
                        f"common words in the list are:")
            return head + "".join(items), question, common, ()
        return build, None
    if task == "kv_retrieval":
        def build(n: int) -> tuple[str, str, tuple[str, ...], tuple[int, ...]]:
            rng = np.random.default_rng(rng_seed)
            key, value = _uuid(rng), _uuid(rng)
            filler_rng = np.random.default_rng([*rng_seed, 1])  # pairs 0..n-1 are the same for every n
            pairs = [f'"{_uuid(filler_rng)}": "{_uuid(filler_rng)}",\n ' for _ in range(n)]
            layout = _Layout(((f'"{key}": "{value}",\n ', depth),),
                             f'\nKey: "{key}"\nThe value associated with the specified key is: "', (value,),
                             head='Extract the value corresponding to the specified key in the JSON object below.\n'
                                  '\nJSON data:\n{', tail='"end": "end"}\n')
            context, offsets = _assemble(layout, pairs)
            return context, layout.question, layout.answers, offsets
        return build, None
    layout = _layout(task, depth, np.random.default_rng(rng_seed), kind)
    pieces = haystack_pieces(haystack, seed)

    def build(n: int) -> tuple[str, str, tuple[str, ...], tuple[int, ...]]:
        context, offsets = _assemble(layout, pieces.first(n))
        return context, layout.question, layout.answers, offsets
    return build, pieces


def make_sample(task: str, length: int, depth: float, seed: int, count: Count, *, haystack: str = "noise",
                values: str = "numbers") -> Sample:
    """One prompt of ``task`` of about ``length`` units (as measured by ``count``) with its facts at ``depth``.

    Raises:
        ValueError: an unknown task, haystack or value kind; a depth outside [0, 1]; a length below what the
            facts and question take alone, or beyond what the haystack holds.
    """
    check_task(task)
    if values not in VALUE_KINDS:
        raise ValueError(f"unknown value kind {values!r}; expected one of {', '.join(VALUE_KINDS)}")
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    build, pieces = _builder(task, depth, seed, haystack, values)
    limit = pieces.limit if pieces is not None else 10**9

    def units(n: int) -> int:
        context, question, _, _ = build(n)
        return count(context + question)

    least = units(0)
    if length < least:
        raise ValueError(f"{task}: length {length} is too short; its facts and question alone take {least} units")
    n, measured = _fit(units, length, least, limit)
    if n == limit and measured < 0.98 * length:
        assert pieces is not None
        raise ValueError(f"{task}: length {length} is out of reach: {pieces.description}, {measured} units in all; "
                         f"give a longer haystack or a shorter length")
    context, question, answers, offsets = build(n)
    return Sample(task, context, question, answers, depth, offsets, length, measured)


def _fit(units: Callable[[int], int], target: int, least: int, limit: int) -> tuple[int, int]:
    """The number of pieces whose prompt is nearest ``target`` units, and its units: secant steps on the mean
    units per piece (the haystacks are homogeneous enough that a few steps land within a piece or two)."""
    best = (0, least)
    n = min(64, limit)
    for _ in range(8):
        measured = units(n)
        if abs(measured - target) < abs(best[1] - target):
            best = (n, measured)
        if abs(measured - target) <= 0.002 * target:
            break
        per_piece = max((measured - least) / n, 1e-6)
        following = min(limit, max(1, int(round((target - least) / per_piece))))
        if following == n:
            break
        n = following
    return best


# ------------------------------------------------------------------------------------------------ training
def training_documents(tasks: Sequence[str], split: str, *, count: Count, lengths: tuple[int, int] = (384, 2048),
                       documents: int = 2000, seed: int = 0, haystack: str = "noise", values: str = "numbers"
                       ) -> list[str]:
    """Whole documents (prompt, answer and a newline) for training on the tasks: lengths log-uniform in
    ``lengths``, depths uniform. Seeds are ``1_000_000 + ...``, disjoint from evaluation's (small integers)."""
    check_split(split)
    for task in tasks:
        check_task(task)
    rng = np.random.default_rng([seed, SPLITS.index(split), 28])
    out: list[str] = []
    misses = 0
    while len(out) < documents:
        task = tasks[len(out) % len(tasks)]
        length = int(np.exp(rng.uniform(np.log(lengths[0]), np.log(lengths[1]))))
        depth = float(rng.uniform()) if uses_depth(task) else 0.5
        sample_seed = 1_000_000 + int(rng.integers(1 << 30))
        try:
            sample = make_sample(task, length, depth, sample_seed, count, haystack=haystack, values=values)
        except ValueError as error:  # shorter than this task's facts and question: draw again
            misses += 1
            if misses >= 100:
                raise ValueError(f"longbench training: no {task} document fits in lengths {lengths} ({error})") from None
            continue
        misses = 0
        separator = "" if sample.question.endswith(('"', " ")) else " "
        out.append(sample.prompt + separator + ", ".join(sample.answers) + "\n")
    return out



TRAINING_DEFAULTS = {"tasks": "+".join(TASKS), "min_length": 384, "max_length": 2048, "documents": 4000, "seed": 0,
                     "haystack": "noise", "values": "numbers"}


def training_source_documents(argument: str, split: str) -> list[np.ndarray]:
    """The documents of the data source ``longbench[:SPEC]`` as bytes: ``training_documents`` with lengths in bytes.

    SPEC: comma-separated ``key=value`` of ``tasks`` (``+``-separated), ``min_length``, ``max_length``,
    ``documents``, ``seed``, ``haystack``, ``values``; e.g. ``longbench:tasks=passkey+niah_single,documents=2000``.

    Raises:
        ValueError: an unknown key, or a value of the wrong type.
    """
    spec: dict[str, object] = dict(TRAINING_DEFAULTS)
    for part in filter(None, argument.split(",")):
        key, _, value = part.partition("=")
        if key not in TRAINING_DEFAULTS:
            raise ValueError(f"longbench data: unknown key {key!r}; the keys are {', '.join(TRAINING_DEFAULTS)}")
        try:
            spec[key] = type(TRAINING_DEFAULTS[key])(value)
        except ValueError:
            raise ValueError(f"longbench data: {key} must be an integer, got {value!r}") from None
    texts = training_documents(str(spec["tasks"]).split("+"), split, count=lambda text: len(text.encode()),
                               lengths=(int(spec["min_length"]), int(spec["max_length"])),
                               documents=int(spec["documents"]), seed=int(spec["seed"]), haystack=str(spec["haystack"]),
                               values=str(spec["values"]))
    return [np.frombuffer(text.encode(), dtype=np.uint8).copy() for text in texts]


register_source("longbench", Source(documents=training_source_documents,
                                    help="longbench[:SPEC], training documents of the long-context tasks, seeds "
                                         "disjoint from evaluation's (longbench/tasks.py)"))
