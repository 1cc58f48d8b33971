"""Held-out suites: counts, golden prompts, exemplars from training data only."""

import json

import pytest

from flan_moe.data import heldout
from flan_moe.data.vocabularies import ByteVocabulary


def test_mmlu_counts_categories_and_golden(data_dir):
    suite = heldout.load_suite("mmlu", mode="direct", shots=1, split="val")
    assert len(suite) == 57 and sum(map(len, suite.values())) == 1531
    assert {e.category for ex in suite.values() for e in ex} == set(heldout.MMLU_CATEGORIES)
    ex = suite["anatomy"][0]
    assert ex.inputs == (
        "The following are multiple choice questions (with answers) about anatomy.\n\n"
        "What is the embryological origin of the hyoid bone?\nA. The first pharyngeal arch\n"
        "B. The first and second pharyngeal arches\nC. The second pharyngeal arch\n"
        "D. The second and third pharyngeal arches\nAnswer: D\n\n"
        "Which of the following terms describes the body's ability to maintain its normal "
        "state?\nA. Anabolism\nB. Catabolism\nC. Tolerance\nD. Homeostasis\nAnswer:"
    )
    assert (ex.answer, ex.target, ex.options) == ("D", "D", ("A", "B", "C", "D"))
    assert ex.choices[3] == "Homeostasis" and ex.category == "other"
    cot = heldout.load_suite("mmlu", mode="cot", shots=0, split="val")["anatomy"][0]
    assert cot.inputs.endswith(
        "Q: Which of the following terms describes the body's ability to maintain its normal "
        "state?\n(A) Anabolism (B) Catabolism (C) Tolerance (D) Homeostasis\n"
        "A: Let's think step by step."
    )
    assert cot.target == "The answer is (D)." and cot.shots_used == 0


def test_mmlu_cot_uses_flan_cot_exemplars(data_dir):
    """5-shot CoT = the Flan prompt of the subject (as published) + the Q/A query block."""
    flan = json.loads((data_dir / "mmlu" / "flan_cot_prompts.json").read_text())
    suite = heldout.load_suite("mmlu", mode="cot", shots=5, split="val")
    query = suite["anatomy"][0].inputs.rsplit("\n\n", 1)[1]
    assert suite["anatomy"][0].inputs == flan["anatomy"].strip() + "\n\n" + query
    assert suite["anatomy"][0].shots_used == 5
    # Flan's human_aging prompt has 4 exemplars: 4 effective shots, not 5.
    assert {e.shots_used for e in suite["human_aging"]} == {4}
    one = heldout.load_suite("mmlu", mode="cot", shots=1, split="val")["anatomy"][0]
    assert one.inputs.count("\nA: Let's think step by step.") == 2
    assert one.inputs.count("The answer is (") == 1


def test_effective_shots_and_bbh_options(data_dir):
    full = heldout.load_suite("bbh", mode="direct", shots=3)["date_understanding"][0]
    assert full.shots_used == 3
    assert full.option_texts[:2] == ("12/11/1937", "12/25/1937")
    fitted = heldout.load_suite(
        "bbh", mode="cot", shots=3, max_input_tokens=len(full.inputs.encode()) + 1
    )["date_understanding"][0]
    assert fitted.shots_used < 3 and fitted.inputs.count("Q: ") == fitted.shots_used + 1
    assert heldout.bbh_option_texts("x\nOptions:\n(A) a b\n(B) c") == ("a b", "c")
    assert heldout.bbh_option_texts("no options here") == ()
    assert (
        sum(map(len, heldout.load_suite("mmlu", mode="direct", shots=5, split="test").values()))
        == 14042
    )


def test_bbh_counts_golden_and_direct_from_cot_exemplars(data_dir):
    cot = heldout.load_suite("bbh", mode="cot", shots=3)
    direct = heldout.load_suite("bbh", mode="direct", shots=3)
    assert len(cot) == 27 and sum(map(len, cot.values())) == 6511
    assert len({e.category for ex in cot.values() for e in ex}) == 23
    d = direct["sports_understanding"][0]
    c = cot["sports_understanding"][0]
    question = json.loads((data_dir / "bbh/bbh/sports_understanding.json").read_text())["examples"][
        0
    ]
    assert d.inputs.startswith(
        "Determine whether an artificially constructed sentence relating to sports is plausible "
        'or not.\n\nQ: Is the following sentence plausible? "Bam Adebayo scored a reverse '
        'layup in the Western Conference Finals."\nA: yes\n\n'
    )
    assert d.inputs.endswith(f"Q: {question['input']}\nA:")
    assert c.inputs.endswith(f"Q: {question['input']}\nA: Let's think step by step.")
    assert "A: Let's think step by step. Bam Adebayo is an American basketball player." in c.inputs
    assert d.answer == c.answer == question["target"]
    # Every parsed exemplar answer has the form of that file's targets (e.g. "(B)", "yes").
    for stem in heldout.BBH_FILES:
        _, shots = heldout.parse_bbh_cot_prompt(str(data_dir / f"bbh/cot-prompts/{stem}.txt"))
        targets = {e.answer for e in direct[stem]}
        assert len(shots) == 3
        if len(targets) <= 20:  # multiple-choice-like tasks
            assert all(s.answer in targets for s in shots), (stem, [s.answer for s in shots])
    zero = heldout.load_suite("bbh", mode="direct", shots=0)["navigate"][0]
    assert zero.inputs.count("Q: ") == 1


def test_gsm8k_svamp_exemplars_come_from_training_data(data_dir):
    suite = heldout.load_suite("gsm8k", mode="cot", shots=8)["gsm8k"]
    assert len(suite) == 1319
    lines = (data_dir / "flan_mini/heldout/gsm8k_test.jsonl").read_text().splitlines()
    test_questions = {json.loads(line)["context"].strip() for line in lines}
    shots = heldout.gsm8k_train_exemplars(8)
    assert not {s.question for s in shots} & test_questions
    ex = suite[0]
    assert ex.inputs.startswith(
        "Q: Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?\nA: "
        "Natalia sold 48 / 2 = 24 clips in May. Natalia sold 48 + 24 = 72 clips altogether in "
        "April and May. So the answer is 72.\n\n"
    )
    assert ex.inputs.count("\nA: ") == 8 and ex.inputs.endswith("\nA:") and ex.answer == "18"
    assert ex.target.endswith("So the answer is 18.") and "<<" not in ex.target
    zs = heldout.load_suite("svamp", mode="cot", shots=0)["svamp"]
    assert len(zs) == 300 and zs[0].inputs.endswith("\nA: Let's think step by step.")
    assert zs[0].inputs.count("Q: ") == 1


def test_fit_to_length_drops_exemplars_not_the_question(data_dir):
    full = heldout.load_suite("bbh", mode="cot", shots=3)["date_understanding"][0]
    fewer = heldout.load_suite("bbh", mode="cot", shots=1)["date_understanding"][0]
    limit = len(ByteVocabulary().encode(fewer.inputs)) + 1
    fitted = heldout.load_suite("bbh", mode="cot", shots=3, max_input_tokens=limit)
    assert fitted["date_understanding"][0].inputs == fewer.inputs != full.inputs


def test_bad_arguments():
    with pytest.raises(ValueError, match="supports 0..5 shots"):
        heldout.load_suite("mmlu", mode="direct", shots=6)
    with pytest.raises(ValueError, match="Unknown held-out suite"):
        heldout.load_suite("arc", mode="direct", shots=0)
