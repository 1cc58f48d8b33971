"""Model-free baselines: hand-made examples, and accuracies recomputed from the data files."""

from __future__ import annotations

import collections
import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flan_moe.evaluation import baselines, results
from flan_moe.evaluation.results import SubtaskResult as R
from tests.evaluation.examples import example

_REPO_ROOT = Path(__file__).resolve().parents[2]


MC = [
    example("mmlu", "anatomy", letter, f"m{i}", ("A", "B", "C", "D"), ("p", "q", "r", "s"))
    for i, letter in enumerate("AABCDA")
]
GEN = [example("bbh", "navigate", ans, f"n{i}") for i, ans in enumerate(["Yes", "No", "No"])]


def test_constant_predictor_outputs():
    const = baselines.ConstantPredictor.from_exemplar_answers({"navigate": ["No", "Yes", "No"]})
    assert const.predict(MC[:2] + GEN[:1]) == ["A", "A", "No"]
    assert baselines.ConstantPredictor(option_index=2).predict(MC[:1]) == ["C"]
    assert baselines.ConstantPredictor(default="zzz").predict(GEN[:1]) == ["zzz"]
    texts_only = example("x", "x", "B", "t0", choices=("p", "q"))
    assert baselines.ConstantPredictor(option_index=1).predict([texts_only]) == ["(B)"]
    with pytest.raises(ValueError, match="has 4 options"):
        baselines.ConstantPredictor(option_index=4).predict(MC[:1])
    with pytest.raises(ValueError, match="no options"):
        baselines.ConstantPredictor().score_options(GEN)


def test_run_baseline_on_hand_made_examples():
    entry, records = baselines.run_baseline(
        baselines.ConstantPredictor(answers={"navigate": "No"}),
        {"anatomy": MC, "navigate": GEN},
        suite="custom",
        mode="direct",
    )
    assert [r.correct for r in records] == [True, True, False, False, False, True] + [
        False,
        True,
        True,
    ]
    assert entry.subtasks == {"anatomy": R(3, 6), "navigate": R(2, 3)}
    assert entry.method == "baseline_constant"
    assert entry.summary["macro_avg"] == pytest.approx((0.5 + 2 / 3) / 2, abs=1e-12)
    # CoT mode writes "So the answer is X." and must give the same grades through extraction.
    cot_entry, _ = baselines.run_baseline(
        baselines.ConstantPredictor(answers={"navigate": "No"}),
        {"anatomy": MC, "navigate": GEN},
        suite="custom",
        mode="cot",
    )
    assert cot_entry.subtasks == entry.subtasks


def test_random_predictor_is_seeded_and_order_free():
    rnd = baselines.RandomPredictor(seed=7, answer_pool={"navigate": ["Yes", "No", "No"]})
    out = rnd.predict(MC + GEN)
    assert out == rnd.predict(MC + GEN)
    assert list(reversed(rnd.predict(list(reversed(MC + GEN))))) == out
    assert [rnd.predict([ex])[0] for ex in MC + GEN] == out
    assert set(out[: len(MC)]) <= {"A", "B", "C", "D"}
    assert set(out[len(MC) :]) <= {"Yes", "No"}
    assert baselines.RandomPredictor().predict(GEN[:1]) == [""]  # no pool -> no answer
    scores = rnd.score_options(MC)
    assert all(s.shape == (4,) for s in scores)


def test_scoring_and_generation_agree_for_constant():
    const = baselines.ConstantPredictor(option_index=3)
    gen, _ = baselines.run_baseline(const, {"anatomy": MC}, suite="custom")
    score, _ = baselines.run_baseline(const, {"anatomy": MC}, suite="custom", method="scoring")
    assert gen.subtasks == score.subtasks == {"anatomy": R(1, 6)}
    assert score.method == "baseline_constant_scoring"


# ------------------------------------------------------------------- against the data files


def _mmlu_val_letters(data_root) -> dict[str, list[str]]:
    out = {}
    for path in sorted((data_root / "mmlu" / "val").glob("*_val.csv")):
        with open(path, encoding="utf-8", newline="") as handle:
            out[path.name.removesuffix("_val.csv")] = [row[5] for row in csv.reader(handle) if row]
    return out


def _mmlu_examples(data_root, mode):
    """The baseline path's examples: the data package's loader."""
    heldout = pytest.importorskip("flan_moe.data.heldout", reason="flan_moe.data.heldout absent")
    return heldout.load_suite("mmlu", mode=mode, shots=0, split="val", data_dir=str(data_root))


@pytest.mark.parametrize("mode", ["direct", "cot"])
def test_constant_baseline_on_mmlu_val_equals_letter_counts(data_root, mode):
    letters = _mmlu_val_letters(data_root)
    entry, _ = baselines.run_baseline(
        baselines.ConstantPredictor(), _mmlu_examples(data_root, mode), suite="mmlu", mode=mode
    )
    per_subject = {s: v.count("A") / len(v) for s, v in letters.items()}
    s = entry.summary
    assert {k: r.accuracy for k, r in entry.subtasks.items()} == pytest.approx(per_subject)
    assert s["macro_avg"] == pytest.approx(sum(per_subject.values()) / 57, abs=1e-12)
    total = sum(len(v) for v in letters.values())
    count_a = sum(v.count("A") for v in letters.values())
    assert (total, count_a) == (1531, 381)
    assert s["micro_avg"] == pytest.approx(count_a / total, abs=1e-12)
    stem = [a for k, a in per_subject.items() if results.MMLU_CATEGORIES[k] == "STEM"]
    assert s["categories"]["STEM"]["macro_avg"] == pytest.approx(sum(stem) / len(stem), abs=1e-12)
    assert s["missing_subtasks"] == [] and s["num_no_answer"] == 0


def test_random_baseline_on_mmlu_val_matches_an_independent_tally(data_root):
    letters = _mmlu_val_letters(data_root)
    examples = _mmlu_examples(data_root, "direct")
    predictor = baselines.RandomPredictor(seed=0)
    entry, records = baselines.run_baseline(predictor, examples, suite="mmlu")
    # Recount from the CSV gold letters and the predicted letters, in file order.
    predicted = collections.defaultdict(list)
    for ex, out in zip(
        [e for v in examples.values() for e in v],
        predictor.predict([e for v in examples.values() for e in v]),
    ):
        predicted[ex.subtask].append(out)
    for subject, gold in letters.items():
        hits = sum(p == g for p, g in zip(predicted[subject], gold, strict=True))
        assert entry.subtasks[subject] == R(hits, len(gold)), subject
    # Chance level: 1531 questions, 4 options -> within 4 standard deviations of 0.25.
    sd = math.sqrt(0.25 * 0.75 / 1531)
    assert abs(entry.summary["micro_avg"] - 0.25) < 4 * sd
    other, _ = baselines.run_baseline(baselines.RandomPredictor(seed=1), examples, suite="mmlu")
    assert other.subtasks != entry.subtasks  # a different seed draws differently


def test_constant_baseline_on_bbh_equals_counts_from_files(data_root):
    heldout = pytest.importorskip("flan_moe.data.heldout", reason="flan_moe.data.heldout absent")
    examples = heldout.load_suite("bbh", mode="direct", shots=0, data_dir=str(data_root))
    answers = baselines.exemplar_answers("bbh", data_dir=str(data_root))
    entry, _ = baselines.run_baseline(
        baselines.ConstantPredictor.from_exemplar_answers(answers), examples, suite="bbh"
    )
    expected = {}
    for stem in results.BBH_FILES:
        prompt = (data_root / "bbh" / "cot-prompts" / f"{stem}.txt").read_text()
        shot_answers = re.findall(r"So the answer is (.*)\.\n", prompt + "\n")
        assert len(shot_answers) == 3, stem
        constant = collections.Counter(shot_answers).most_common(1)[0][0]
        targets = [
            e["target"]
            for e in json.loads((data_root / "bbh" / "bbh" / f"{stem}.json").read_text())[
                "examples"
            ]
        ]
        expected[stem] = (sum(t == constant for t in targets), len(targets))
    assert {k: (r.correct, r.total) for k, r in entry.subtasks.items()} == expected
    accs = {k: c / n for k, (c, n) in expected.items()}
    assert entry.summary["macro_avg_files"] == pytest.approx(sum(accs.values()) / 27, abs=1e-12)
    tasks = collections.defaultdict(list)
    for k, a in accs.items():
        tasks[re.sub(r"_(three|five|seven)_objects$", "", k)].append(a)
    assert len(tasks) == 23
    macro23 = sum(sum(v) / len(v) for v in tasks.values()) / 23
    assert entry.summary["macro_avg_tasks"] == pytest.approx(macro23, abs=1e-12)


def test_constant_baseline_on_gsm8k_equals_counts_from_files(data_root):
    heldout = pytest.importorskip("flan_moe.data.heldout", reason="flan_moe.data.heldout absent")
    examples = heldout.load_suite("gsm8k", mode="cot", shots=0, data_dir=str(data_root))
    answers = baselines.exemplar_answers("gsm8k", data_dir=str(data_root))
    entry, _ = baselines.run_baseline(
        baselines.ConstantPredictor.from_exemplar_answers(answers),
        examples,
        suite="gsm8k",
        mode="cot",
    )
    with open(data_root / "flan_cot" / "gsm8k_train.tsv", encoding="utf-8") as handle:
        first8 = [line.split("\t")[1] for line in handle.read().split("\n")[:8]]
    constant = collections.Counter(first8).most_common(1)[0][0]
    with open(data_root / "flan_mini" / "heldout" / "gsm8k_test.jsonl", encoding="utf-8") as h:
        gold = [json.loads(line)["answer"] for line in h if line.strip()]
    hits = sum(float(g.replace(",", "")) == float(constant) for g in gold)
    assert entry.subtasks == {"gsm8k": R(hits, len(gold))}


def test_evaluation_modules_import_without_tf_seqio_gin_jax():
    code = (
        "import sys; import flan_moe.evaluation.baselines, flan_moe.evaluation.metrics, "
        "flan_moe.evaluation.results; "
        "bad = [m for m in ('tensorflow', 'seqio', 'gin', 'jax') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=_REPO_ROOT)
