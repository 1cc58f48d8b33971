"""Answer normalisation, extraction and rank classification on hand-written outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flan_moe.evaluation import metrics

# (prediction, BBH target, expected). Targets are real BBH targets.
EXACT_CASES = [
    ("(A)", "(A)", True),
    ("A", "(A)", True),
    ("a.", "(A)", True),
    ("(a)", "(A)", True),
    ("A)", "(A)", True),
    ("**(B)**", "(B)", True),
    ("(B) heptagon", "(B)", True),
    ("(K)", "(K)", True),
    ("(C)", "(B)", False),
    ("(B", "(B)", False),
    ("B heptagon", "(B)", False),
    ("True", "True", True),
    ("true.", "True", True),
    ("False", "True", False),
    ("valid", "invalid", False),
    ("Valid", "valid", True),
    ('"invalid".', "invalid", True),
    ("yes", "Yes", True),
    ("No", "no", True),
    ("no", "Yes", False),
    ("] ) >", "] ) >", True),
    ("] ) >.", "] ) >", True),
    ("]  )\n>", "] ) >", True),
    ("]) >", "] ) >", False),
    ("] )", "] ) >", False),
    ("}", ")", False),
    ("o'connell phony", "o'connell phony", True),
    ("oconnell phony", "o'connell phony", False),
    ("aperture bradshaw r&d", "aperture bradshaw r&d", True),
    ("bradshaw aperture r&d", "aperture bradshaw r&d", False),
    ("24", "24", True),
    ("24.0", "24", True),
    ("-35", "-35", True),
    ("35", "-35", False),
    ("3,929", "3929", True),
    ("Monsters, Inc.", "Monsters, Inc", True),
    ("Monsters Inc", "Monsters, Inc", False),
    ("", "(A)", False),
    (None, "(A)", False),
]


@pytest.mark.parametrize(("prediction", "target", "expected"), EXACT_CASES)
def test_exact_match_cases(prediction, target, expected):
    assert metrics.exact_match(prediction, target) is expected


def test_normalize_answer_rules():
    assert metrics.normalize_answer("  **(B)**. ") == "(b)"
    assert metrics.normalize_answer("B") == "(b)"
    assert metrics.normalize_answer("True") == "true"
    assert metrics.normalize_answer("] ]") == "] ]"
    assert metrics.normalize_answer("it&t   malton\nonus") == "it&t malton onus"
    assert metrics.normalize_answer("“yes”") == "yes"
    assert metrics.normalize_answer(".") == "."  # a lone period is kept, not emptied


def test_real_bbh_targets_keep_their_identity(data_root):
    """Every real target matches itself (and itself + "."), and normalisation never merges two
    different targets of one file into one."""
    for path in sorted((data_root / "bbh" / "bbh").glob("*.json")):
        targets = [ex["target"] for ex in json.loads(path.read_text())["examples"]]
        for target in set(targets):
            assert metrics.exact_match(target, target), (path.name, target)
            assert metrics.exact_match(target + ".", target), (path.name, target)
        distinct = set(targets)
        assert len({metrics.normalize_answer(t) for t in distinct}) == len(distinct), path.name


COT_CASES = [
    ("Plugging in A, we get Z = False. So the answer is False.", "False"),
    ("... So the answer is (A).", "(A)"),
    ("so the answer is valid", "valid"),
    ("So the answer is **(C)**.", "(C)"),
    ("**So the answer is (B).**", "(B)"),
    ("The answer is: Yes. I am confident.", "Yes"),
    ("So the answer is } ] >.", "} ] >"),
    ("So the answer is 3.5", "3.5"),
    ("So the answer is 3.5.", "3.5"),
    ("So the answer is -219.", "-219"),
    ("The answer is (A). Wait, no. So the answer is (D).", "(D)"),
    ("So the answer is arson aspect census.\nQ: next question", "arson aspect census"),
    ("Answer: (E)", "(E)"),
    ("So the answer is Monsters, Inc.", "Monsters, Inc"),
    # malformed: no answer phrase, or nothing after it
    ("Let's think step by step. A is left of B.", None),
    ("So the answer is", None),
    ("So the answer is .", None),
    ("So the answer is **", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("output", "expected"), COT_CASES)
def test_extract_cot_answer(output, expected):
    assert metrics.extract_cot_answer(output) == expected


NUMBER_CASES = [
    ("She makes 9 * 2 = $18 every day. So the answer is 18.", "18"),
    ("So the answer is $1,234.", "1234"),
    ("The total is 1,450,000 dollars", "1450000"),
    ("The temperature fell to -10 degrees.", "-10"),
    ("16-3-4=9", "9"),
    ("x = 10 - 3", "3"),
    ("It costs -$5", "-5"),
    ("The answer is 0.5.", "0.5"),
    ("Half is 2.50 dollars, total 18.0", "18.0"),
    ("So the answer is 12 apples, not 15 pears", "15"),
    ("#### 72", "72"),
    ("no digits here", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("text", "expected"), NUMBER_CASES)
def test_extract_last_number(text, expected):
    assert metrics.extract_last_number(text) == expected


def test_extract_numeric_answer_prefers_answer_phrase():
    text = "So the answer is 42. Check: 40 + 2 = 42 and 7 more is 49"
    assert metrics.extract_numeric_answer(text) == "42"
    assert metrics.extract_last_number(text) == "49"
    assert metrics.extract_numeric_answer("So the answer is eighteen, from 9 * 2") == "2"
    assert metrics.extract_numeric_answer("I cannot tell") is None


@pytest.mark.parametrize(
    ("prediction", "gold", "expected"),
    [
        ("18.0", "18", True),
        ("18", "18.00", True),
        ("1234", "1,234", True),
        ("-3", "-3", True),
        ("3", "-3", False),
        ("17.99", "18", False),
        (None, "18", False),
        ("eighteen", "18", False),
    ],
)
def test_numbers_match(prediction, gold, expected):
    assert metrics.numbers_match(prediction, gold) is expected


def test_numbers_match_rejects_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        metrics.numbers_match("3", "three")


CHOICES = ("Paris", "London", "Rome", "Berlin")
CHOICE_CASES = [
    ("A", 0),
    ("(B)", 1),
    ("c.", 2),
    ("D:", 3),
    ("**B**", 1),
    ("The answer is (D).", 3),
    ("Let me think. Rome is the capital. So the answer is C.", 2),
    ("So the answer is Berlin.", 3),
    ("rome", 2),
    ("London.", 1),
    ("B. London", 1),
    ("(C) Rome", 2),
    ("B\nExplanation: because", 1),
    # malformed or not a choice
    ("A cat sat on the mat", None),
    ("E", None),
    ("(F) Madrid", None),
    ("Madrid", None),
    ("So the answer is", None),
    ("", None),
    (None, None),
]


@pytest.mark.parametrize(("prediction", "expected"), CHOICE_CASES)
def test_extract_choice(prediction, expected):
    assert metrics.extract_choice(prediction, CHOICES) == expected


def test_gold_choice_index():
    assert metrics.gold_choice_index("C", 4) == 2
    assert metrics.gold_choice_index("(B)", 4) == 1
    with pytest.raises(ValueError, match="not a letter"):
        metrics.gold_choice_index("E", 4)


def test_grade_output_formats():
    g = metrics.grade_output
    assert g("B", answer="B", answer_format="choice", choices=CHOICES) == metrics.Graded("B", True)
    assert g("London", answer="A", answer_format="choice", choices=CHOICES).correct is False
    # CoT needs the answer phrase; without it the output has no answer and is wrong.
    cot = g("B", answer="B", answer_format="choice", choices=CHOICES, cot=True)
    assert cot == metrics.Graded(None, False)
    assert g("So the answer is (B).", answer="B", answer_format="choice", choices=CHOICES, cot=True)
    assert g(" (A). ", answer="(A)", answer_format="exact").correct
    assert g("(A)", answer="(A)", answer_format="exact", cot=True) == metrics.Graded(None, False)
    assert g("So the answer is (A).", answer="(A)", answer_format="exact", cot=True).correct
    assert g("So the answer is 2,125.", answer="2,125", answer_format="number", cot=True).correct
    assert g("I give up", answer="5", answer_format="number") == metrics.Graded(None, False)
    with pytest.raises(ValueError, match="answer_format"):
        g("x", answer="x", answer_format="bleu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="option texts"):
        g("A", answer="A", answer_format="choice")


JUNK = [
    None,
    "",
    " ",
    "\n\n",
    "So the answer is",
    "answer is answer is",
    "(((",
    "$",
    "-",
    "1,",
    "ü" * 50,
]


@pytest.mark.parametrize("junk", JUNK)
@pytest.mark.parametrize("cot", [False, True])
def test_malformed_outputs_are_wrong_and_never_raise(junk, cot):
    for fmt, answer, choices in (
        ("choice", "A", CHOICES),
        ("exact", "(A)", ()),
        ("exact", "valid", ()),
        ("number", "18", ()),
    ):
        graded = metrics.grade_output(
            junk, answer=answer, answer_format=fmt, choices=choices, cot=cot
        )
        assert graded.correct is False


def test_accuracy_missing_when_empty():
    assert metrics.accuracy([]) is None
    assert metrics.accuracy([True, False, True, True]) == 0.75


def test_rank_classify_plain_and_length_normalised():
    # summed: -3 > -4 > -5 -> option 0; per token: -3/1, -4/4 = -1, -5/10 = -0.5 -> option 2.
    ll, lengths = [-3.0, -4.0, -5.0], [1, 4, 10]
    assert metrics.rank_classify(ll) == 0
    assert metrics.rank_classify(ll, token_lengths=lengths, length_normalized=True) == 2
    assert metrics.rank_classify(np.array([-1.0, -1.0, -2.0])) == 0  # tie -> lowest index
    assert metrics.rank_classify([-math.inf, -7.0]) == 1
    batch = metrics.rank_classify_batch(
        [ll, [-2.0, -1.0]], token_lengths=[lengths, [1, 4]], length_normalized=True
    )
    assert batch == [2, 1]  # second: -2/1 vs -1/4 -> 1
    assert metrics.rank_classify_batch([ll, [-2.0, -1.0]]) == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_likelihoods": [], "length_normalized": False}, "non-empty"),
        ({"log_likelihoods": [0.0, math.nan]}, "finite"),
        ({"log_likelihoods": [0.0, -1.0], "length_normalized": True}, "token_lengths"),
        (
            {"log_likelihoods": [0.0, -1.0], "token_lengths": [1], "length_normalized": True},
            "shape",
        ),
        (
            {"log_likelihoods": [0.0, -1.0], "token_lengths": [1, 0], "length_normalized": True},
            "at least one",
        ),
    ],
)
def test_rank_classify_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.rank_classify(**kwargs)


def test_option_label():
    assert [metrics.option_label(i) for i in range(3)] == ["(A)", "(B)", "(C)"]
    with pytest.raises(ValueError, match="outside"):
        metrics.option_label(26)


# ----------------------------------------------------------------------- strict grading


@pytest.mark.parametrize(
    "output, correct",
    [
        ("(A)", True),
        ("A", True),
        ("(A).", True),
        ("a", True),
        ("(A) circle", True),
        ("(A) circle, because it has no corners", True),
        ("(A) or (B)", False),  # a hedge naming the gold label is still wrong
        ("A or B", False),
        ("(A)/(B)", False),
        ("(A) (B)", False),
        ("A. B.", False),
        ("(A) square", False),  # the gold label with another option's text
        ("(B)", False),
        ("(A) because (B) is too small", False),  # the explanation names a second option
    ],
)
def test_strict_option_grading_bbh(output, correct):
    graded = metrics.grade_output(
        output, answer="(A)", answer_format="exact", choices=("circle", "square")
    )
    assert graded.correct is correct


@pytest.mark.parametrize(
    "output, letter",
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B. Paris", "B"),
        ("Paris", "B"),
        ("B\nExplanation: it is the capital of France.", "B"),
        ("(A) or (B)", None),
        ("B or C", None),
        ("(B) Rome", None),  # label B with the text of option C
    ],
)
def test_strict_choice_extraction_mmlu_direct(output, letter):
    graded = metrics.grade_output(
        output, answer="B", answer_format="choice", choices=("Lyon", "Paris", "Rome", "Nice")
    )
    assert graded.extracted == letter and graded.correct is (letter == "B")


def test_cot_grading_reads_the_final_answer_only():
    choices = ("Lyon", "Paris", "Rome", "Nice")
    reasoning = "(A) is in the south and (C) is in Italy. The answer is (B)."
    assert metrics.grade_output(reasoning, answer="B", answer_format="choice",
                                choices=choices, cot=True).correct  # fmt: skip
    # Flan CoT grading needs "The answer is (X)": a bare letter is no answer.
    bare = metrics.grade_output("B", answer="B", answer_format="choice", choices=choices, cot=True)
    assert bare.extracted is None and not bare.correct
    hedge = "So the answer is (B) or (C)."
    assert not metrics.grade_output(hedge, answer="B", answer_format="choice",
                                    choices=choices, cot=True).correct  # fmt: skip
    # BBH CoT: the text after the LAST "So the answer is", to the end of that sentence.
    two = "So the answer is (A). Wait, no. So the answer is (B). Next Q: more"
    graded = metrics.grade_output(two, answer="(B)", answer_format="exact", cot=True)
    assert graded.extracted == "(B)" and graded.correct


@pytest.mark.parametrize(
    "output, target, correct",
    [
        ("] ) >", "] ) >", True),  # dyck: brackets kept, spaces count
        ("]) >", "] ) >", False),
        ("] ) > ]", "] ) >", False),
        ("apple banana cherry", "apple banana cherry", True),  # word_sorting lists
        ("apple cherry banana", "apple banana cherry", False),
        ("apple, banana, cherry", "apple banana cherry", False),
    ],
)
def test_exact_match_sequences(output, target, correct):
    assert metrics.grade_output(output, answer=target, answer_format="exact").correct is correct


@pytest.mark.parametrize(
    "output, correct",
    [
        ("So the answer is 1,234.", True),
        ("So the answer is $1,234.", True),
        ("So the answer is 1234 dollars.", True),
        ("She pays $1,234.00 in total.", True),
        ("So the answer is 1,234 km.", True),
        ("So the answer is 12,34.", False),
        ("So the answer is 1,235.", False),
    ],
)
def test_gsm8k_numbers_with_commas_units_and_dollars(output, correct):
    assert metrics.grade_output(output, answer="1234", answer_format="number").correct is correct
