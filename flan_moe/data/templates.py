"""FLAN-style instruction templates written for this project (pure Python, no TF).

Three template families, each with several instruction phrasings:

- ``"mc"``: a question with answer options. "With options" appends an ``OPTIONS:`` block
  (``"\\n\\nOPTIONS:\\n- a\\n- b"``); "without options" leaves it out. Target: the answer text.
- ``"qa"``: a free-form question. Target: the answer text.
- ``"cot"``: chain of thought. Target: ``"<rationale> So the answer is <answer>."``.

Choices are deterministic per example: the phrasing, and whether options are shown, come from
``stable_hash`` of the example id (never Python's salted ``hash()``). Few-shot prompts put
``k`` exemplars (rendered with the same phrasing, each followed by its target) before the
query, separated by blank lines. Exemplars come from the training split and never include the
evaluated example (same id or same question text). ``render`` returns the prompt candidates
from ``k`` shots down to 0, so the pipeline keeps the most shots that fit the input length: an
exemplar is dropped before the question is ever cut.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from flan_moe.data.records import Record, stable_hash

# {context} is "<passage>\n\n" or ""; {options} is the OPTIONS block or "".
MC_TEMPLATES: tuple[str, ...] = (
    "{context}{question}{options}",
    "Answer the following question.\n\n{context}{question}{options}",
    "{context}Question: {question}\nWhat is the correct answer?{options}",
    "Pick the right answer.\n{context}{question}{options}",
)
QA_TEMPLATES: tuple[str, ...] = (
    "{context}{question}",
    "Answer this question:\n\n{context}{question}",
    "Q: {context}{question}\nA:",
    "Please answer the following question. {context}{question}",
)
COT_TEMPLATES: tuple[str, ...] = (
    "{question}\nLet's think step by step.",
    "Q: {question}\nA: Let's think first.",
    "{question} Think carefully first, then answer.",
    "Answer the following question, reasoning step by step.\n{question}",
)
FAMILIES: dict[str, tuple[str, ...]] = {
    "mc": MC_TEMPLATES,
    "qa": QA_TEMPLATES,
    "cot": COT_TEMPLATES,
}
EXEMPLAR_SEPARATOR = "\n\n"
DEFAULT_SHOTS = 3


@dataclasses.dataclass(frozen=True)
class Rendered:
    """A templated example: prompt candidates (most shots first) and the target text."""

    candidates: tuple[str, ...]
    targets: str
    template_index: int
    with_options: bool


def prompt_variant(record: Record) -> str:
    """``"zs"`` or ``"fs"`` (zero-/few-shot), 50/50 by stable hash of the example id."""
    return "fs" if stable_hash("few_shot", record.example_id) % 2 else "zs"


def family_of(record: Record, *, cot: bool) -> str:
    """``"cot"`` for chain-of-thought data, else ``"mc"`` with options, else ``"qa"``."""
    if cot:
        return "cot"
    return "mc" if record.options else "qa"


def options_block(options: Sequence[str]) -> str:
    """``"\\n\\nOPTIONS:\\n- a\\n- b"`` (FLAN's format)."""
    return "\n\nOPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def _fill(template: str, record: Record, with_options: bool) -> str:
    return template.format(
        context=f"{record.context}\n\n" if record.context else "",
        question=record.question,
        options=options_block(record.options) if with_options and record.options else "",
    )


def target_text(record: Record, family: str) -> str:
    if family == "cot":
        rationale = record.rationale.strip()
        return f"{rationale} So the answer is {record.answer}." if rationale else record.answer
    return record.answer


def choose_exemplars(
    record: Record, pool: Sequence[Record], k: int, *, salt: str = ""
) -> list[Record]:
    """``k`` distinct exemplars from ``pool``, chosen by stable hash; never ``record`` itself.

    An exemplar with the same id or the same question text as ``record`` is skipped. Returns
    fewer than ``k`` if the pool is too small.
    """
    eligible = [
        i
        for i, p in enumerate(pool)
        if p.example_id != record.example_id and p.question != record.question
    ]
    k = min(k, len(eligible))
    chosen: list[int] = []
    attempt = 0
    while len(chosen) < k:
        j = eligible[stable_hash(salt, record.example_id, "shot", attempt) % len(eligible)]
        attempt += 1
        if j not in chosen:
            chosen.append(j)
    return [pool[j] for j in chosen]


def render(
    record: Record,
    *,
    cot: bool,
    exemplars: Sequence[Record] = (),
    with_options: bool | None = None,
    template_index: int | None = None,
) -> Rendered:
    """Renders ``record`` (zero-shot if ``exemplars`` is empty, else few-shot).

    Template phrasing and with/without options are chosen by stable hash of the example id
    unless given. Candidates run from ``len(exemplars)`` shots down to 0 shots; exemplars are
    dropped from the front (the one furthest from the question goes first).
    """
    family = family_of(record, cot=cot)
    templates = FAMILIES[family]
    if template_index is None:
        template_index = stable_hash("template", record.example_id) % len(templates)
    if with_options is None:
        with_options = family == "mc" and stable_hash("options", record.example_id) % 2 == 0
    template = templates[template_index]
    query = _fill(template, record, with_options)
    shots = [_fill(template, ex, with_options) + "\n" + target_text(ex, family) for ex in exemplars]
    candidates = tuple(EXEMPLAR_SEPARATOR.join([*shots[n:], query]) for n in range(len(shots) + 1))
    return Rendered(candidates, target_text(record, family), template_index, with_options)


def fit_candidates(candidates: Sequence[str], max_tokens: int, count_tokens) -> str:
    """The first candidate (most shots) whose token count + 1 (EOS) fits ``max_tokens``.

    If even the last (fewest shots) does not fit, it is returned as is: the pipeline then
    truncates and counts it.
    """
    for c in candidates:
        if count_tokens(c) + 1 <= max_tokens:
            return c
    return candidates[-1]
