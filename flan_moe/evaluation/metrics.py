"""Answer extraction and correctness for held-out evaluation (MMLU, BBH, GSM8K, SVAMP).

Pure Python + numpy: no TensorFlow, SeqIO, gin or JAX, so it runs on an accelerator host.

Three answer formats, one per suite family (`ANSWER_FORMATS`):

* ``"exact"`` (BBH): exact match after `normalize_answer`.
* ``"choice"`` (MMLU): the prediction names an option by letter ("A", "(A)", "A.",
  "The answer is (B)", "B. Paris") or by the option's own text; `extract_choice` returns the
  option index and the prediction is right when it is the gold letter's index.
* ``"number"`` (GSM8K, SVAMP): the last number in the answer is compared numerically
  (exact decimal equality, so "18.0" == "18" and "1,234" == "1234").

What `normalize_answer` does, in order (and nothing else):

1. Unicode NFKC (full-width letters, non-breaking spaces -> plain ones).
2. Whitespace runs (spaces, tabs, newlines) -> one space; leading/trailing whitespace removed.
3. Repeated until stable: strip a leading/trailing markdown wrapper (``**``, ``*``, `` ` ``),
   one pair of matching surrounding quotes (``"x"``, ``'x'``, ``“x”``), and one trailing period.
4. Case-folded ("True" == "true", "Valid" == "valid").
5. A lone option letter, written "(A)", "A)" or "A" (after the steps above, so also "A."),
   becomes the canonical "(a)".

No other punctuation is touched: BBH ``dyck_languages`` targets are nothing but brackets
("] ) >"), ``word_sorting`` keeps apostrophes and ampersands ("o'connell", "it&t"), and
``movie_recommendation`` has the target "Monsters, Inc". Spaces inside a dyck sequence count
("]]" != "] ]"). `exact_match` adds two rules on top of string equality: two plain numbers
compare numerically ("24.0" == "24"), and a gold option label "(B)" also accepts a prediction
that starts with that label and then gives the option text ("(B) heptagon").

Strict grading (`hedged`, applied by `exact_match` and `extract_choice`): an answer that names
more than one option label, or a label followed by the text of ANOTHER option, is wrong, even
when one of the labels is the gold one. Labels are "(X)" anywhere, "X." / "X)" standing alone,
and bare letters joined by "or", "and", "/" or ",". Examples with gold "(A)" and options
(A) circle, (B) square:

* "(A)", "A", "(A).", "a", "(A) circle", "(A) circle, because it is round" -> right;
* "(A) or (B)", "A or B", "(A)/(B)", "(A) (B)", "A. B." -> wrong (hedges);
* "(A) square" -> wrong (the label of one option with the text of another);
* "(B)" -> wrong.

In direct mode the whole output is checked (an explanation that names a second option makes
the answer a hedge); in CoT mode only the text after the final "answer is".

Chain-of-thought outputs end with "... So the answer is X." (the BBH cot-prompts format);
`extract_cot_answer` takes the text after the LAST "answer is" (any case, so "So the answer is",
"The final answer is", "answer is:") or "Answer:" up to the end of that line or sentence.
Malformed outputs (no answer phrase, empty answer, None) give ``None`` and are scored wrong;
nothing here raises on model output.

Rank classification (`rank_classify`) turns per-option log-likelihoods into a predicted index,
either by the summed log-likelihood or by its per-token average (length-normalised).
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

import numpy as np

AnswerFormat = Literal["exact", "choice", "number"]

#: Answer format of each suite family (the evaluator maps its suite names onto these).
ANSWER_FORMATS: dict[str, AnswerFormat] = {
    "mmlu": "choice",
    "bbh": "exact",
    "gsm8k": "number",
    "svamp": "number",
}

#: Letters used to label options: (A), (B), ... BBH geometric_shapes goes up to (K).
OPTION_LETTERS = string.ascii_uppercase

_WS_RE = re.compile(r"\s+")
_QUOTE_PAIRS = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"))
_LONE_LABEL_RE = re.compile(r"^(?:\(([a-z])\)|([a-z])\)?)$")
_OPTION_LABEL_RE = re.compile(r"^\([a-z]\)$")
_ANSWER_IS_RE = re.compile(r"\banswer(?:\s+is\b\s*:?|\s*:)\s*", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)")
_PLAIN_NUMBER_RE = re.compile(r"^[-\u2212]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?$")
# A number inside free text: optional sign (not right after a word character or ")", so the
# "-" in "16-3" is subtraction), optional "$", digits with optional thousands commas and
# decimals. A trailing sentence period is not part of the number ("18." -> 18).
_NUMBER_IN_TEXT_RE = re.compile(
    r"(?<![\w.)])(?P<sign>[-\u2212](?=\$?\d))?\$?"
    r"(?P<body>(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?)"
)


# ----------------------------------------------------------------------------- normalisation


def _collapse_ws(text: str) -> str:
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", text)).strip()


def _strip_wrappers(text: str) -> str:
    """Steps 2-3 of `normalize_answer` (case kept)."""
    text = _collapse_ws(text)
    while True:
        before = text
        text = text.strip().strip("*`").strip()
        for left, right in _QUOTE_PAIRS:
            if len(text) >= 2 and text.startswith(left) and text.endswith(right):
                text = text[1:-1].strip()
                break
        if text.endswith(".") and len(text) > 1:
            text = text[:-1].rstrip()
        if text == before:
            return text


def normalize_answer(text: str) -> str:
    """Normalises an answer string for exact match (rules in the module docstring)."""
    text = _strip_wrappers(text).casefold()
    label = _LONE_LABEL_RE.match(text)
    if label:
        return f"({label.group(1) or label.group(2)})"
    return text


def parse_number(text: str | None) -> Decimal | None:
    """Parses a whole string as one number ("1,234", "-3", "$18", "18.0", "7."); else None."""
    if text is None:
        return None
    cleaned = _strip_wrappers(text)
    if not _PLAIN_NUMBER_RE.match(cleaned):
        return None
    sign = -1 if cleaned[0] in "-\u2212" else 1
    body = cleaned.lstrip("-\u2212").lstrip("$").replace(",", "")
    try:
        return sign * Decimal(body)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None


_PAREN_LABEL_RE = re.compile(r"\(([A-Za-z])\)")
_ALONE_LABEL_RE = re.compile(r"(?:^|(?<=\s))([A-Z])[.)](?=\s|$)")
_LETTER_LIST_RE = re.compile(
    r"^\(?([A-Za-z])\)?\s*(?:,|/|&|\bor\b|\band\b)\s*\(?([A-Za-z])\)?(?![A-Za-z])"
)


def option_labels_named(text: str, num_options: int | None = None) -> set[str]:
    """The distinct option letters a text names ("(A) or (B)" -> {"A", "B"}), upper case.

    Counted: "(X)" anywhere, "X." / "X)" standing alone, and a leading "X or Y" list; with
    `num_options`, letters beyond the options are ignored.
    """
    text = unicodedata.normalize("NFKC", text)
    found = {m.upper() for m in _PAREN_LABEL_RE.findall(text)}
    found |= set(_ALONE_LABEL_RE.findall(text))
    listed = _LETTER_LIST_RE.match(text.strip())
    if listed:
        found |= {listed.group(1).upper(), listed.group(2).upper()}
    if num_options is not None:
        found = {x for x in found if _letter_index(x, num_options) is not None}
    return found


def hedged(text: str | None, choices: Sequence[str] = ()) -> bool:
    """Whether an answer names more than one option, or one label with another option's text.

    See "Strict grading" in the module docstring. `choices` are the option texts in label
    order (A, B, ...); without them only the labels are counted.
    """
    if not text:
        return False
    count = len(choices) or None
    if len(option_labels_named(text, count)) > 1:
        return True
    lead = _LEADING_LABEL_RE.match(_strip_wrappers(text))
    if not lead or not choices:
        return False
    index = _letter_index(lead.group(1) or lead.group(2), len(choices))
    rest = _strip_wrappers(_strip_wrappers(text)[lead.end() - 1 :]).casefold()
    texts = [_strip_wrappers(c).casefold() for c in choices]
    return index is not None and rest != texts[index] and rest in texts


def exact_match(prediction: str | None, target: str, choices: Sequence[str] = ()) -> bool:
    """BBH exact match after `normalize_answer`; None (no answer) and hedges are wrong.

    `choices`: the example's option texts in label order (BBH "Options:" lines), used to
    reject "(A) <text of option B>" (see "Strict grading" in the module docstring).
    """
    if prediction is None:
        return False
    pred, gold = normalize_answer(prediction), normalize_answer(target)
    if _OPTION_LABEL_RE.match(gold) and hedged(prediction, choices):
        return False
    if pred == gold:
        return True
    pred_num, gold_num = parse_number(prediction), parse_number(target)
    if pred_num is not None and gold_num is not None:
        return pred_num == gold_num
    if _OPTION_LABEL_RE.match(gold):
        return pred.startswith(gold + " ")
    return False


# --------------------------------------------------------------------- chain-of-thought answers


def extract_cot_answer(text: str | None) -> str | None:
    """The answer after the last "answer is" / "answer:" (any case), or None if there is none.

    The answer runs to the end of its line and stops at the first sentence-ending period
    (a "." followed by whitespace or the end, so "3.5" stays whole). Markdown bold ``**`` in
    the answer is removed. Examples: "... So the answer is (A)." -> "(A)";
    "the answer is: **valid**" -> "valid"; "So the answer is 42. Done." -> "42".
    """
    if not text:
        return None
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :].split("\n", 1)[0].replace("**", "").replace("__", "")
    end = _SENTENCE_END_RE.search(rest)
    if end:
        rest = rest[: end.start()]
    answer = _strip_wrappers(rest)
    return answer or None


# ------------------------------------------------------------------------------ numbers


def extract_last_number(text: str | None) -> str | None:
    """The last number written in `text` as a canonical string ("-1234.5"), or None.

    Handles thousands commas ("1,234"), negatives ("-3", but "16-3" is 3), decimals, "$"
    and a trailing sentence period ("18.").
    """
    if not text:
        return None
    matches = list(_NUMBER_IN_TEXT_RE.finditer(unicodedata.normalize("NFKC", text)))
    if not matches:
        return None
    last = matches[-1]
    body = last.group("body").replace(",", "")
    return ("-" if last.group("sign") else "") + body


def extract_numeric_answer(text: str | None) -> str | None:
    """GSM8K/SVAMP answer: the last number in the "the answer is" phrase when there is one
    holding a number, else the last number anywhere in the output; None if no number."""
    phrase = extract_cot_answer(text)
    from_phrase = extract_last_number(phrase)
    if from_phrase is not None:
        return from_phrase
    return extract_last_number(text)


def numbers_match(prediction: str | None, target: str) -> bool:
    """Numeric equality of two number strings ("18.0" == "18", "1,234" == "1234")."""
    pred, gold = parse_number(prediction), parse_number(target)
    if gold is None:
        raise ValueError(
            f"gold answer {target!r} is not a number; the 'number' answer format needs "
            "numeric gold answers (GSM8K/SVAMP)"
        )
    return pred is not None and pred == gold


# --------------------------------------------------------------------------- multiple choice


def _letter_index(letter: str, num_options: int) -> int | None:
    index = OPTION_LETTERS.find(letter.upper())
    return index if 0 <= index < num_options else None


_FULL_LETTER_RE = re.compile(r"^\(?([A-Za-z])\)?[.:]?$")
_LEADING_LABEL_RE = re.compile(r"^(?:\(([A-Za-z])\)|([A-Za-z])[.):])\s+\S")


def _choice_by_letter_or_text(text: str, choices: Sequence[str], count: int) -> int | None:
    """A lone letter ("B", "(B)", "b.", "B:") or the full text of one option."""
    full = _FULL_LETTER_RE.match(text)
    index = _letter_index(full.group(1), count) if full else None
    if index is not None:
        return index
    folded = text.casefold()
    for index, choice in enumerate(choices):
        if _strip_wrappers(choice).casefold() == folded:
            return index
    return None


def _choice_by_leading_label(text: str, count: int) -> int | None:
    """A label followed by text: "(B) Paris", "B. Paris", "B) Paris", "B: Paris"."""
    leading = _LEADING_LABEL_RE.match(text)
    if leading:
        return _letter_index(leading.group(1) or leading.group(2), count)
    return None


def extract_choice(
    prediction: str | None, choices: Sequence[str], *, num_options: int | None = None
) -> int | None:
    """The option index a prediction names, or None.

    Tried in order on the cleaned prediction (whitespace, markdown, quotes, trailing period):
    a lone letter ("B", "(B)", "b.", "B:") or the text of an option (case-insensitive; the
    first option wins if two options have the same text); the same on the first line alone;
    then, when the output says "the
    answer is X", the letter/text/leading-label rules on X; then a leading label followed by
    text ("(B) Paris", "B. Paris", "B) Paris"). Letters beyond the number of options give None,
    and so does a hedge (`hedged`: two labels, or one label with another option's text).
    `choices` are the option texts, lettered A, B, ... in order; `num_options` defaults to
    ``len(choices)`` (pass it when only the count is known).
    """
    count = len(choices) if num_options is None else num_options
    if count <= 0:
        raise ValueError("extract_choice needs at least one option (choices or num_options)")
    if not prediction:
        return None
    if len(option_labels_named(prediction, count)) > 1 or hedged(prediction, choices):
        return None  # strict grading: a hedge names no single option
    text = _strip_wrappers(prediction)
    if not text:
        return None
    found = _choice_by_letter_or_text(text, choices, count)
    lines = prediction.strip().split("\n", 1)
    if found is None and len(lines) > 1:  # "B\nExplanation: ..." -> the first line decides
        found = _choice_by_letter_or_text(_strip_wrappers(lines[0]), choices, count)
    if found is not None:
        return found
    phrase = extract_cot_answer(prediction)
    if phrase is not None:
        found = _choice_by_letter_or_text(phrase, choices, count)
        if found is None:
            found = _choice_by_leading_label(phrase, count)
        if found is not None:
            return found
    return _choice_by_leading_label(text, count)


def gold_choice_index(answer: str, num_options: int) -> int:
    """Index of a gold answer letter ("B" or "(B)"); raises ValueError on anything else."""
    match = _FULL_LETTER_RE.match(answer.strip())
    index = _letter_index(match.group(1), num_options) if match else None
    if index is None:
        raise ValueError(
            f"gold multiple-choice answer {answer!r} is not a letter among the "
            f"{num_options} options; MMLU answers must be one of "
            f"{', '.join(OPTION_LETTERS[:num_options])}"
        )
    return index


def option_label(index: int) -> str:
    """The label written for option `index`: 0 -> "(A)"."""
    if not 0 <= index < len(OPTION_LETTERS):
        raise ValueError(f"option index {index} is outside 0..{len(OPTION_LETTERS) - 1}")
    return f"({OPTION_LETTERS[index]})"


# -------------------------------------------------------------------------------- grading


@dataclass(frozen=True)
class Graded:
    """One graded output: the extracted answer (None when none was found) and correctness."""

    extracted: str | None
    correct: bool


def grade_output(
    output: str | None,
    *,
    answer: str,
    answer_format: AnswerFormat,
    choices: Sequence[str] = (),
    cot: bool = False,
) -> Graded:
    """Extracts the answer from a model (or baseline) output and scores it against `answer`.

    In CoT mode (``cot=True``) the "exact" and "choice" formats need a "the answer is X" phrase
    (no phrase -> None, wrong); in direct mode the whole output is the answer, unless it says
    "the answer is X", then X. The "number" format uses `extract_numeric_answer` in both modes
    (the last number, as is usual for GSM8K). For "choice", `choices` are the option texts
    (lettered A, B, ... in order; MMLU: the 4 texts) and ``extracted`` is the option letter.
    """
    if answer_format == "number":
        extracted = extract_numeric_answer(output)
        return Graded(extracted, numbers_match(extracted, answer))
    if answer_format == "exact":
        phrase = extract_cot_answer(output)
        if phrase is None and not cot and output is not None:
            phrase = _strip_wrappers(output) or None
        return Graded(phrase, exact_match(phrase, answer, choices))
    if answer_format == "choice":
        if not choices:
            raise ValueError(
                "the 'choice' answer format needs the example's option texts (MMLU: the 4 "
                "choices); got none"
            )
        num_options = len(choices)
        gold = gold_choice_index(answer, num_options)
        text = output
        if cot:
            text = extract_cot_answer(output)
        index = extract_choice(text, choices, num_options=num_options)
        letter = None if index is None else OPTION_LETTERS[index]
        return Graded(letter, index == gold)
    raise ValueError(
        f"unknown answer_format {answer_format!r}; use one of 'exact', 'choice', 'number'"
    )


def accuracy(correct: Sequence[bool]) -> float | None:
    """Fraction correct, or None (missing) for no examples."""
    return None if len(correct) == 0 else sum(bool(c) for c in correct) / len(correct)


# ----------------------------------------------------------------------- rank classification


def _option_scores(
    log_likelihoods: Sequence[float] | np.ndarray,
    token_lengths: Sequence[int] | np.ndarray | None,
    length_normalized: bool,
) -> np.ndarray:
    scores = np.asarray(log_likelihoods, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError(
            f"rank classification needs a non-empty 1-D list of option log-likelihoods, "
            f"got shape {scores.shape}"
        )
    if np.isnan(scores).any() or np.isposinf(scores).any():
        raise ValueError(f"option log-likelihoods must be finite or -inf, got {scores.tolist()}")
    if not length_normalized:
        return scores
    if token_lengths is None:
        raise ValueError("length_normalized=True needs token_lengths (target tokens per option)")
    lengths = np.asarray(token_lengths, dtype=np.float64)
    if lengths.shape != scores.shape:
        raise ValueError(
            f"token_lengths has shape {lengths.shape} but there are {scores.size} options"
        )
    if (lengths <= 0).any():
        raise ValueError(f"every option needs at least one target token, got {lengths.tolist()}")
    return scores / lengths


def rank_classify(
    log_likelihoods: Sequence[float] | np.ndarray,
    *,
    token_lengths: Sequence[int] | np.ndarray | None = None,
    length_normalized: bool = False,
) -> int:
    """Index of the best option: max summed log-likelihood, or max per-token average
    (sum / token length) when `length_normalized`. Ties go to the lowest index."""
    return int(np.argmax(_option_scores(log_likelihoods, token_lengths, length_normalized)))


def rank_classify_batch(
    log_likelihoods: Sequence[Sequence[float] | np.ndarray],
    *,
    token_lengths: Sequence[Sequence[int] | np.ndarray] | None = None,
    length_normalized: bool = False,
) -> list[int]:
    """`rank_classify` per example; examples may have different numbers of options."""
    if token_lengths is not None and len(token_lengths) != len(log_likelihoods):
        raise ValueError(
            f"{len(log_likelihoods)} examples of log-likelihoods but {len(token_lengths)} of "
            "token lengths"
        )
    return [
        rank_classify(
            scores,
            token_lengths=None if token_lengths is None else token_lengths[i],
            length_normalized=length_normalized,
        )
        for i, scores in enumerate(log_likelihoods)
    ]
