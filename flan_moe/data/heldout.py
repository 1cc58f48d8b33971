"""Held-out evaluation suites: MMLU, BBH, GSM8K, SVAMP (pure Python, no TF / SeqIO).

``load_suite(suite, mode=..., shots=...)`` returns ``{subtask: [EvalExample, ...]}`` with the
prompts already few-shot formatted. This module is the one source of prompt truth: the SeqIO
held-out tasks in ``tasks/heldout.py`` wrap it. None of these suites is ever in a training
mixture (``tests/tasks`` checks every registered mixture).

Prompt formats (``{..}`` are fields; exemplars are joined to the query by a blank line):

- MMLU direct (``split`` "val" or "test"; exemplars: the first ``shots`` rows of the subject's
  dev CSV, ``shots`` <= 5; the hendrycks/test and lm-evaluation-harness ``mmlu`` format, with
  lm-eval's whitespace handling: the question is stripped, the option texts are not)::

    The following are multiple choice questions (with answers) about {subject words}.

    {question}
    A. {a}
    B. {b}
    C. {c}
    D. {d}
    Answer: {letter}            <- exemplar; the query ends "Answer:"

- MMLU CoT: Flan's chain-of-thought prompts (``mmlu/flan_cot_prompts.json``: the header line
  and 5 exemplars per subject, from the Flan 2 release's ``mmlu-cot.json`` as vendored by
  lm-evaluation-harness' ``mmlu_flan_cot_fewshot``; the first ``shots`` are kept)::

    The following are multiple choice questions (with answers) about {subject words}.

    Q: {question}
    (A) {a} (B) {b} (C) {c} (D) {d}
    A: Let's think step by step. {reasoning} The answer is (X).     <- exemplar

    Q: {question}
    (A) {a} (B) {b} (C) {c} (D) {d}
    A: Let's think step by step.                                    <- query

  MMLU ``options`` = ("A", "B", "C", "D") (the strings a rank-classification scorer compares),
  ``choices`` = the four option texts, ``answer`` = the gold letter, ``category`` = one of
  STEM / humanities / social sciences / other.
- BBH (27 files; ``shots`` 3 or 0; exemplars parsed from ``cot-prompts/<file>.txt``)::

    {task description}

    Q: {exemplar input}
    A: Let's think step by step. {rationale} So the answer is {answer}.   (cot)
    A: {answer}                                                          (direct)

    Q: {input}
    A: Let's think step by step.      (cot)   |   A:   (direct)

  ``answer`` = the JSON target; ``option_texts`` = the option texts of the question's
  "Options:" lines ("(A) x" -> "x", in label order; empty when it has none), used by strict
  grading; ``category`` = the task (files of one task share it, e.g. ``logical_deduction``).
- GSM8K test and SVAMP (``shots`` 8 or 0; exemplars: the first ``shots`` rows of
  ``flan_cot/gsm8k_train.tsv``, a training split, never the evaluated set)::

    Q: {question}
    A: {rationale} So the answer is {number}.   (cot exemplar)  |  A: {number}  (direct exemplar)

    Q: {question}
    A:                                  (cot few-shot and direct)
    A: Let's think step by step.        (cot zero-shot)

Targets: direct = the answer string (MMLU letter, BBH target, number); cot = ``"{rationale} So
the answer is {answer}."`` where the data has a rationale (GSM8K test), else ``"So the answer is
{answer}."``. The ``split`` argument only matters for MMLU; BBH, GSM8K and SVAMP each have one
evaluation set. ``max_input_tokens`` (with ``vocabulary``) falls back to fewer shots (the
prompt built with ``shots - 1``, then ``shots - 2``, ...) until the prompt fits; the question
itself is never cut. Each example records the exemplars it kept in ``shots_used`` (the
effective shots the results tables show next to the requested k).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import re
from pathlib import Path

from flan_moe.data import paths
from flan_moe.data.malformed import read_json, read_jsonl, record_context
from flan_moe.data.vocabularies import get_vocabulary

SUITES: tuple[str, ...] = ("mmlu", "bbh", "gsm8k", "svamp")
MODES: tuple[str, ...] = ("direct", "cot")
MMLU_LETTERS: tuple[str, ...] = ("A", "B", "C", "D")
MMLU_CATEGORIES: tuple[str, ...] = ("STEM", "humanities", "social sciences", "other")

_S, _H, _SS, _O = MMLU_CATEGORIES
MMLU_SUBJECT_CATEGORY: dict[str, str] = {
    "abstract_algebra": _S,
    "anatomy": _O,
    "astronomy": _S,
    "business_ethics": _O,
    "clinical_knowledge": _O,
    "college_biology": _S,
    "college_chemistry": _S,
    "college_computer_science": _S,
    "college_mathematics": _S,
    "college_medicine": _O,
    "college_physics": _S,
    "computer_security": _S,
    "conceptual_physics": _S,
    "econometrics": _SS,
    "electrical_engineering": _S,
    "elementary_mathematics": _S,
    "formal_logic": _H,
    "global_facts": _O,
    "high_school_biology": _S,
    "high_school_chemistry": _S,
    "high_school_computer_science": _S,
    "high_school_european_history": _H,
    "high_school_geography": _SS,
    "high_school_government_and_politics": _SS,
    "high_school_macroeconomics": _SS,
    "high_school_mathematics": _S,
    "high_school_microeconomics": _SS,
    "high_school_physics": _S,
    "high_school_psychology": _SS,
    "high_school_statistics": _S,
    "high_school_us_history": _H,
    "high_school_world_history": _H,
    "human_aging": _O,
    "human_sexuality": _SS,
    "international_law": _H,
    "jurisprudence": _H,
    "logical_fallacies": _H,
    "machine_learning": _S,
    "management": _O,
    "marketing": _O,
    "medical_genetics": _O,
    "miscellaneous": _O,
    "moral_disputes": _H,
    "moral_scenarios": _H,
    "nutrition": _O,
    "philosophy": _H,
    "prehistory": _H,
    "professional_accounting": _O,
    "professional_law": _H,
    "professional_medicine": _O,
    "professional_psychology": _SS,
    "public_relations": _SS,
    "security_studies": _SS,
    "sociology": _SS,
    "us_foreign_policy": _SS,
    "virology": _O,
    "world_religions": _H,
}
MMLU_SUBJECTS: tuple[str, ...] = tuple(sorted(MMLU_SUBJECT_CATEGORY))
BBH_FILES: tuple[str, ...] = (
    "boolean_expressions",
    "causal_judgement",
    "date_understanding",
    "disambiguation_qa",
    "dyck_languages",
    "formal_fallacies",
    "geometric_shapes",
    "hyperbaton",
    "logical_deduction_five_objects",
    "logical_deduction_seven_objects",
    "logical_deduction_three_objects",
    "movie_recommendation",
    "multistep_arithmetic_two",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "salient_translation_error_detection",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects",
    "tracking_shuffled_objects_three_objects",
    "web_of_lies",
    "word_sorting",
)
MAX_SHOTS: dict[str, int] = {"mmlu": 5, "bbh": 3, "gsm8k": 8, "svamp": 8}
COT_TRIGGER = "Let's think step by step."


@dataclasses.dataclass(frozen=True)
class EvalExample:
    """One held-out example, ready for the evaluator (see the module docstring for formats)."""

    task: str  # suite: "mmlu", "bbh", "gsm8k", "svamp"
    subtask: str  # MMLU subject, BBH file stem, or the suite name
    inputs: str  # full prompt, few-shot formatted
    target: str  # gold target text
    answer: str  # gold answer as the metric compares it
    options: tuple[str, ...] = ()  # MMLU: ("A", "B", "C", "D"); empty otherwise
    choices: tuple[str, ...] = ()  # MMLU: the option texts
    category: str = ""  # MMLU group or BBH task family
    example_id: str = ""
    shots_used: int = 0  # exemplars actually in ``inputs`` (fewer than asked when cut to fit)
    option_texts: tuple[str, ...] = ()  # BBH: the texts of the question's "(A) x" options


@dataclasses.dataclass(frozen=True)
class _Shot:
    question: str  # the text after "Q: " (or the MMLU question block)
    answer: str
    rationale: str = ""


# ----------------------------------------------------------------------------- prompt assembly


def _cot_target(answer: str, rationale: str = "") -> str:
    rationale = rationale.strip()
    return f"{rationale} So the answer is {answer}." if rationale else f"So the answer is {answer}."


def _assemble(
    header: str, shots: list[str], query: str, max_tokens: int | None, vocabulary: str
) -> tuple[str, int]:
    """(prompt, exemplars kept): header + shots + query; falls back to fewer shots (the last
    exemplar goes first) until the prompt fits, so a fitted prompt equals the prompt built with
    fewer ``shots``."""
    vocab = get_vocabulary(vocabulary) if max_tokens is not None else None
    for n in range(len(shots), -1, -1):
        text = "\n\n".join([p for p in (header,) if p] + shots[:n] + [query])
        if vocab is None or len(vocab.encode(text)) + 1 <= max_tokens:
            return text, n
    return text, 0


def _check(suite: str, mode: str, shots: int) -> None:
    if suite not in SUITES:
        raise ValueError(f"Unknown held-out suite {suite!r}; use one of {SUITES}.")
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
    if not 0 <= shots <= MAX_SHOTS[suite]:
        raise ValueError(f"{suite} supports 0..{MAX_SHOTS[suite]} shots, got {shots}.")


# ----------------------------------------------------------------------------------------- MMLU


def _read_mmlu_csv(path: Path) -> list[list[str]]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    for i, r in enumerate(rows):
        if len(r) != 6 or r[5] not in MMLU_LETTERS:
            raise ValueError(f"{path} row {i}: expected question,A,B,C,D,answer; got {r!r}")
    return rows


def _mmlu_block(row: list[str]) -> str:
    lines = [row[0].strip()] + [f"{x}. {text}" for x, text in zip(MMLU_LETTERS, row[1:5])]
    return "\n".join(lines)


def _mmlu_cot_block(row: list[str]) -> str:
    options = " ".join(f"({x}) {text}" for x, text in zip(MMLU_LETTERS, row[1:5]))
    return f"Q: {row[0].strip()}\n{options}\nA: {COT_TRIGGER}"


@functools.lru_cache(maxsize=4)
def mmlu_cot_prompts(root: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{subject: (header, exemplars)} of Flan's MMLU CoT prompts (``flan_cot_prompts.json``);
    each exemplar is a whole "Q: ... The answer is (X)." block."""
    path = paths.data_file("mmlu/flan_cot_prompts.json", root=root)
    prompts = read_json(path, expected='{"<subject>": "<header> Q: ... The answer is (X)."}')
    out = {}
    for subject in MMLU_SUBJECTS:
        if subject not in prompts:
            raise ValueError(f"{path} has no prompt for MMLU subject {subject!r}")
        header, *blocks = prompts[subject].strip().split("\n\nQ: ")
        shots = tuple("Q: " + b.strip() for b in blocks)
        if not shots or not all(_MMLU_COT_END.search(b) for b in shots):
            raise ValueError(
                f"{path}: {subject!r} should hold 'Q: ... The answer is (X).' exemplars"
            )
        out[subject] = (header.strip(), shots)
    return out


# (college_chemistry's Flan prompt has an exemplar answering "(E)", and three subjects have 4
# exemplars: kept as published; the effective shots show the 4.)
_MMLU_COT_END = re.compile(r"The answer is \([A-Z]\)\.$")


def _mmlu_prompt_parts(subject, dev, mode, shots, root) -> tuple[str, list[str]]:
    if mode == "cot":
        header, exemplars = mmlu_cot_prompts(root)[subject]
        return header, list(exemplars[:shots])
    header = (
        "The following are multiple choice questions (with answers) about "
        f"{subject.replace('_', ' ')}."
    )
    return header, [f"{_mmlu_block(r)}\nAnswer: {r[5]}" for r in dev[:shots]]


def _load_mmlu(split, mode, shots, root, max_tokens, vocabulary) -> dict[str, list[EvalExample]]:
    if split not in ("val", "test"):
        raise ValueError(f"MMLU split must be 'val' or 'test', got {split!r}.")
    out: dict[str, list[EvalExample]] = {}
    for subject in MMLU_SUBJECTS:
        dev = _read_mmlu_csv(paths.data_file(f"mmlu/dev/{subject}_dev.csv", root=root))
        rows = _read_mmlu_csv(paths.data_file(f"mmlu/{split}/{subject}_{split}.csv", root=root))
        header, shot_texts = _mmlu_prompt_parts(subject, dev, mode, shots, root)
        examples = []
        for i, row in enumerate(rows):
            query = _mmlu_cot_block(row) if mode == "cot" else f"{_mmlu_block(row)}\nAnswer:"
            inputs, kept = _assemble(header, shot_texts, query, max_tokens, vocabulary)
            examples.append(
                EvalExample(
                    task="mmlu",
                    subtask=subject,
                    inputs=inputs,
                    shots_used=kept,
                    target=f"The answer is ({row[5]})." if mode == "cot" else row[5],
                    answer=row[5],
                    options=MMLU_LETTERS,
                    choices=tuple(row[1:5]),
                    category=MMLU_SUBJECT_CATEGORY[subject],
                    example_id=f"mmlu/{split}/{subject}/{i}",
                )
            )
        out[subject] = examples
    return out


# ------------------------------------------------------------------------------------------ BBH

BBH_LAYOUT = '{"examples": [{"input": ..., "target": ...}, ...]}'
_ANSWER_RE = re.compile(r"So the answer is (.*)\.\s*$", re.DOTALL)


_BBH_OPTION_RE = re.compile(r"^\(([A-Z])\) (.*)$", re.MULTILINE)


def bbh_option_texts(question: str) -> tuple[str, ...]:
    """The texts of a BBH question's "Options:" lines, in label order ("(A) x" -> "x"); empty
    when it has none or the labels are not A, B, C, ... in order."""
    _, sep, tail = question.rpartition("Options:")
    found = _BBH_OPTION_RE.findall(tail) if sep else []
    letters = [letter for letter, _ in found]
    if not found or letters != [chr(ord("A") + i) for i in range(len(found))]:
        return ()
    return tuple(text.strip() for _, text in found)


def bbh_family(file_stem: str) -> str:
    """The BBH task a file belongs to (the 3 variants of two tasks share one name)."""
    for family in ("logical_deduction", "tracking_shuffled_objects"):
        if file_stem.startswith(family):
            return family
    return file_stem


@functools.lru_cache(maxsize=64)
def parse_bbh_cot_prompt(path: str) -> tuple[str, tuple[_Shot, ...]]:
    """(task description, exemplars) from a ``cot-prompts/*.txt`` file.

    Layout: canary line, ``-----``, description, then blocks ``Q: ...\\nA: Let's think step by
    step.\\n<rationale> So the answer is X.`` separated by blank lines.
    """
    text = Path(path).read_text(encoding="utf-8")
    _, sep, body = text.partition("-----\n")
    if not sep:
        raise ValueError(f"{path}: no '-----' line after the canary")
    description, *blocks = body.strip().split("\n\nQ: ")
    shots = []
    for block in blocks:
        question, sep, answer_part = block.partition("\nA: ")
        if not sep or not answer_part.startswith(COT_TRIGGER):
            raise ValueError(f"{path}: exemplar without 'A: {COT_TRIGGER}': {block[:80]!r}")
        rationale_and_answer = answer_part[len(COT_TRIGGER) :].strip()
        m = _ANSWER_RE.search(rationale_and_answer)
        if m is None:
            raise ValueError(f"{path}: exemplar without 'So the answer is X.': {block[-80:]!r}")
        rationale = rationale_and_answer[: m.start()].strip()
        shots.append(_Shot(question.strip(), m.group(1).strip(), rationale))
    return description.strip(), tuple(shots)


def _load_bbh(mode, shots, root, max_tokens, vocabulary) -> dict[str, list[EvalExample]]:
    out: dict[str, list[EvalExample]] = {}
    for stem in BBH_FILES:
        description, exemplars = parse_bbh_cot_prompt(
            str(paths.data_file(f"bbh/cot-prompts/{stem}.txt", root=root))
        )
        path = paths.data_file(f"bbh/bbh/{stem}.json", root=root)
        data = read_json(path, expected=BBH_LAYOUT)
        if mode == "cot":
            shot_texts = [
                f"Q: {s.question}\nA: {COT_TRIGGER} {s.rationale} So the answer is {s.answer}."
                for s in exemplars[:shots]
            ]
        else:
            shot_texts = [f"Q: {s.question}\nA: {s.answer}" for s in exemplars[:shots]]
        examples = []
        with record_context(path, "(whole file)", expected=BBH_LAYOUT):
            rows = list(data["examples"])
        for i, ex in enumerate(rows):
            with record_context(path, f"example {i}", expected=BBH_LAYOUT):
                query = f"Q: {ex['input']}\nA:" + (f" {COT_TRIGGER}" if mode == "cot" else "")
                str(ex["target"])  # a missing target is reported here, with its file
            inputs, kept = _assemble(description, shot_texts, query, max_tokens, vocabulary)
            examples.append(
                EvalExample(
                    task="bbh",
                    subtask=stem,
                    inputs=inputs,
                    shots_used=kept,
                    option_texts=bbh_option_texts(ex["input"]),
                    target=_cot_target(ex["target"]) if mode == "cot" else ex["target"],
                    answer=ex["target"],
                    category=bbh_family(stem),
                    example_id=f"bbh/{stem}/{i}",
                )
            )
        out[stem] = examples
    return out


# ------------------------------------------------------------------------------ GSM8K / SVAMP

_CALCULATOR = re.compile(r"<<[^>]*>>")


def gsm8k_train_exemplars(k: int, *, data_dir: str | None = None) -> list[_Shot]:
    """The first ``k`` rows of ``flan_cot/gsm8k_train.tsv`` (a training split)."""
    path = paths.data_file("flan_cot/gsm8k_train.tsv", root=data_dir)
    shots = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(shots) == k:
                break
            with record_context(path, f"row {number}", expected="question<TAB>answer<TAB>why"):
                q, a, r = (x.replace("\\n", "\n").strip() for x in row)
            shots.append(_Shot(q, a, r))
    return shots


def _load_math(suite, mode, shots, root, max_tokens, vocabulary) -> dict[str, list[EvalExample]]:
    name = "gsm8k_test" if suite == "gsm8k" else "svamp"
    path = paths.data_file(f"flan_mini/heldout/{name}.jsonl", root=root)
    rows = read_jsonl(path, expected='{"context": ..., "answer": ...}')
    if mode == "cot":
        shot_texts = [
            f"Q: {s.question}\nA: {s.rationale} So the answer is {s.answer}."
            for s in gsm8k_train_exemplars(shots, data_dir=root)
        ]
    else:
        shot_texts = [
            f"Q: {s.question}\nA: {s.answer}" for s in gsm8k_train_exemplars(shots, data_dir=root)
        ]
    examples = []
    for i, (line, row) in enumerate(rows):
        with record_context(path, f"line {line}", expected='{"context": str, "answer": ...}'):
            answer = str(row["answer"]).strip()
            query = f"Q: {row['context'].strip()}\nA:"
        if mode == "cot" and shots == 0:
            query += f" {COT_TRIGGER}"
        rationale = ""
        if suite == "gsm8k":
            rationale = _CALCULATOR.sub("", row.get("chain_of_thought", "")).replace("\n", " ")
        inputs, kept = _assemble("", shot_texts, query, max_tokens, vocabulary)
        examples.append(
            EvalExample(
                task=suite,
                subtask=suite,
                inputs=inputs,
                shots_used=kept,
                target=_cot_target(answer, rationale) if mode == "cot" else answer,
                answer=answer,
                example_id=f"{suite}/{i}",
            )
        )
    return {suite: examples}


def reference_answers(suite: str, mode: str, *, data_dir: str | None = None) -> list[str]:
    """The answers a model is expected to write, to size the decode length: in CoT mode the
    exemplars' whole answers (reasoning + "The answer is (X)." / "So the answer is X."); in
    direct mode the exemplar answers and every gold answer (a cap shorter than the gold answer
    would make it impossible to get right)."""
    _check(suite, mode, 0)
    root = str(paths.data_dir(data_dir))
    if suite == "mmlu":
        if mode == "direct":
            return list(MMLU_LETTERS)
        blocks = [b for _, shots in mmlu_cot_prompts(root).values() for b in shots]
        return [b.split(f"\nA: {COT_TRIGGER}", 1)[-1].strip() for b in blocks]
    if suite == "bbh":
        out = []
        for stem in BBH_FILES:
            _, shots = parse_bbh_cot_prompt(
                str(paths.data_file(f"bbh/cot-prompts/{stem}.txt", root=root))
            )
            if mode == "cot":
                out += [f"{s.rationale} So the answer is {s.answer}." for s in shots]
            else:
                bbh_file = paths.data_file(f"bbh/bbh/{stem}.json", root=root)
                data = read_json(bbh_file, expected=BBH_LAYOUT)
                out += [s.answer for s in shots] + [ex["target"] for ex in data["examples"]]
        return out
    shots = gsm8k_train_exemplars(MAX_SHOTS[suite], data_dir=root)
    if mode == "cot":
        return [f"{s.rationale} So the answer is {s.answer}." for s in shots]
    return [s.answer for s in shots]


def load_suite(
    suite: str,
    *,
    mode: str,
    shots: int,
    split: str = "val",
    data_dir: str | None = None,
    max_input_tokens: int | None = None,
    vocabulary: str = "byte",
) -> dict[str, list[EvalExample]]:
    """Held-out examples of ``suite`` by subtask (formats in the module docstring).

    Args:
      suite: "mmlu", "bbh", "gsm8k" or "svamp".
      mode: "direct" or "cot".
      shots: number of exemplars (MMLU <= 5, BBH <= 3, GSM8K/SVAMP <= 8).
      split: MMLU "val" or "test" (ignored by the other suites, which have one eval set).
      data_dir: data root (default ``$FLAN_MOE_DATA_DIR``).
      max_input_tokens: if set, fewer shots are used until the prompt plus EOS fits this many
        tokens of ``vocabulary`` (0 shots is kept even if it does not fit).
      vocabulary: vocabulary spec used for ``max_input_tokens``.
    """
    _check(suite, mode, shots)
    root = str(paths.data_dir(data_dir))
    if suite == "mmlu":
        return _load_mmlu(split, mode, shots, root, max_input_tokens, vocabulary)
    if suite == "bbh":
        return _load_bbh(mode, shots, root, max_input_tokens, vocabulary)
    return _load_math(suite, mode, shots, root, max_input_tokens, vocabulary)
