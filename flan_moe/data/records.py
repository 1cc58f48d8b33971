"""Readers that turn the local FLAN files into uniform ``Record``s (pure Python, no TF).

A ``Record`` is one supervised example before templating: a question (with an optional passage),
answer options when the dataset has them, the gold answer text, and a rationale for
chain-of-thought data. Files (formats in ``$FLAN_MOE_DATA_DIR/README.md``):

- ``flan_cot/<name>_train.tsv``: ``question<TAB>answer<TAB>rationale``, literal ``\\n`` newlines.
- ``flan_mini/train/<name>.jsonl``: multiple choice ``{"query", "choices", "gold"}``, generation
  ``{"context", "continuation"|"answer"}``, Winograd-style ``{"context_options", "continuation",
  "gold"}``.

Every local dataset is split deterministically into ``train`` and a small ``validation`` part
(``VALIDATION_EVERY``: one record in 50 by a hash of its id) so that in-distribution eval loss
can be measured; few-shot exemplars only ever come from ``train``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from flan_moe.data import paths
from flan_moe.data.malformed import read_jsonl, record_context

COT_DATASETS: tuple[str, ...] = (
    "aqua",
    "creak",
    "ecqa",
    "gsm8k",
    "qasc",
    "sensemaking",
    "strategyqa",
)
MINI_DATASETS: tuple[str, ...] = (
    "aqua",
    "arc_challenge",
    "arc_easy",
    "boolq",
    "commonsense_qa",
    "copa",
    "jeopardy_all",
    "math_qa",
    "openbook_qa",
    "piqa",
    "siqa",
    "triviaqa_sm_sub",
    "winograd_wsc",
    "winogrande",
)
SPLITS: tuple[str, ...] = ("train", "validation")
COT_LAYOUT = "question<TAB>answer<TAB>rationale"
MINI_LAYOUT = (
    '{"query", "choices", "gold"}, {"context", "continuation"|"answer"} or '
    '{"context_options", "continuation", "gold"}'
)
VALIDATION_EVERY = 50


@dataclasses.dataclass(frozen=True)
class Record:
    """One example before templating.

    Attributes:
      dataset: source dataset name, e.g. ``"boolq"``.
      example_id: stable id, ``"<collection>/<dataset>/<row index>"``.
      question: the question or instruction-free prompt text.
      answer: gold answer text (for multiple choice: the text of the correct option).
      options: answer options (empty for free-form answers).
      context: an optional passage shown before the question.
      rationale: chain-of-thought rationale (empty when the data has none).
    """

    dataset: str
    example_id: str
    question: str
    answer: str
    options: tuple[str, ...] = ()
    context: str = ""
    rationale: str = ""


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike ``hash()``)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of(example_id: str) -> str:
    """``"validation"`` for one id in ``VALIDATION_EVERY`` (by stable hash), else ``"train"``."""
    return "validation" if stable_hash("split", example_id) % VALIDATION_EVERY == 0 else "train"


_LETTER_LINE = re.compile(r"^([A-Z])\. (.*)$")


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _split_lettered(query: str) -> tuple[str, tuple[str, ...]]:
    """``"stem\\n[Choices:\\n]A. x\\nB. y\\nAnswer:"`` -> (stem, ("x", "y"))."""
    lines = query.rstrip().split("\n")
    if lines and lines[-1].strip() == "Answer:":
        lines = lines[:-1]
    options: list[str] = []
    while lines and _LETTER_LINE.match(lines[-1]):
        options.insert(0, _LETTER_LINE.match(lines[-1]).group(2).strip())
        lines = lines[:-1]
    if lines and lines[-1].strip() == "Choices:":
        lines = lines[:-1]
    return "\n".join(lines).strip(), tuple(options)


def _mini_record(dataset: str, idx: int, row: dict) -> Record:
    """Normalises one ``flan_mini`` JSON row (see module docstring for the three formats)."""
    rid = f"flan_mini/{dataset}/{idx}"
    if "context_options" in row:  # Winograd-style: which sentence start fits the ending.
        options = tuple(f"{c} {row['continuation']}" for c in row["context_options"])
        return Record(
            dataset,
            rid,
            "Which of the following sentences makes more sense?",
            options[row["gold"]],
            options,
        )
    if "query" in row:
        query: str = row["query"]
        choices = tuple(str(c) for c in row["choices"])
        if all(len(c) == 1 and c.isalpha() for c in choices):  # options written in the query
            stem, options = _split_lettered(query)
            if len(options) != len(choices):
                raise ValueError(f"{rid}: cannot parse lettered options from {query!r}")
        else:
            stem, options = query.strip(), choices
        context = ""
        if stem.startswith("Passage: ") and "\nQuestion: " in stem:  # BoolQ
            passage, _, question = stem.partition("\nQuestion: ")
            context, stem = _strip_prefix(passage, "Passage: "), question
        elif stem.startswith("Context: ") and "\nQuestion: " in stem:  # SIQA
            passage, _, question = stem.partition("\nQuestion: ")
            context, stem = _strip_prefix(passage, "Context: "), question
        stem = _strip_prefix(stem.strip(), "Question: ").strip()
        if dataset == "boolq":
            stem = stem[:1].upper() + stem[1:] + ("" if stem.endswith("?") else "?")
        return Record(dataset, rid, stem, options[row["gold"]], options, context)
    question = _strip_prefix(row["context"].strip(), "Question: ")
    question = question.removesuffix("Answer:").strip()
    answer = str(row.get("answer", row.get("continuation", ""))).strip()
    return Record(dataset, rid, question, answer, rationale=row.get("chain_of_thought", "") or "")


def _cot_record(dataset: str, idx: int, fields: Sequence[str]) -> Record:
    if len(fields) != 3:
        raise ValueError(f"{len(fields)} tab-separated fields, not 3")
    q, a, r = (f.replace("\\n", "\n").strip() for f in fields)
    return Record(dataset, f"flan_cot/{dataset}/{idx}", q, a, rationale=r)


_SKIPPED: dict[tuple[str, str], int] = {}


def skipped_records(collection: str, dataset: str) -> int:
    """How many rows of a dataset were skipped for an empty gold answer (after it was read).

    The source data has a few such rows (e.g. MathQA options whose text is missing); they can
    not be templated into a supervised example, so they are left out, counted and logged.
    """
    return _SKIPPED.get((collection, dataset), 0)


def _read_all(collection: str, dataset: str, root: str | None) -> tuple[Record, ...]:
    parsed = _parse_all(collection, dataset, root)
    kept = tuple(r for r in parsed if r.answer.strip())
    if len(kept) != len(parsed):
        _SKIPPED[(collection, dataset)] = len(parsed) - len(kept)
        logging.warning(
            "%s/%s: skipped %d of %d rows with an empty gold answer",
            collection,
            dataset,
            len(parsed) - len(kept),
            len(parsed),
        )
    return kept


@functools.lru_cache(maxsize=64)
def _parse_all(collection: str, dataset: str, root: str | None) -> tuple[Record, ...]:
    if collection == "flan_cot":
        path = paths.data_file(f"flan_cot/{dataset}_train.tsv", root=root)
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        out = []
        for i, row in enumerate(rows):
            if row:
                with record_context(path, f"row {i + 1}", expected=COT_LAYOUT):
                    out.append(_cot_record(dataset, i, row))
        return tuple(out)
    if collection == "flan_mini":
        path = paths.data_file(f"flan_mini/train/{dataset}.jsonl", root=root)
        rows = read_jsonl(path, expected=MINI_LAYOUT)
        out = []
        for i, (line, row) in enumerate(rows):
            with record_context(path, f"line {line}", expected=MINI_LAYOUT):
                out.append(_mini_record(dataset, i, row))
        return tuple(out)
    raise ValueError(f"Unknown local collection {collection!r}: use 'flan_cot' or 'flan_mini'.")


def read_records(
    collection: str, dataset: str, split: str = "train", *, data_dir: str | Path | None = None
) -> tuple[Record, ...]:
    """The records of one local dataset's split (``"train"`` or ``"validation"``), cached."""
    known = COT_DATASETS if collection == "flan_cot" else MINI_DATASETS
    if dataset not in known:
        raise ValueError(f"Unknown {collection} dataset {dataset!r}; known: {', '.join(known)}")
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r} for local data; use one of {SPLITS}.")
    return _read_split(collection, dataset, split, str(paths.data_dir(data_dir)))


@functools.lru_cache(maxsize=128)
def _read_split(collection: str, dataset: str, split: str, root: str) -> tuple[Record, ...]:
    return tuple(r for r in _read_all(collection, dataset, root) if split_of(r.example_id) == split)
