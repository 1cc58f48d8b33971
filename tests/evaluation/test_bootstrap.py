"""Bootstrap intervals: a hand-computed case, the normal approximation, paired differences."""

import math

import numpy as np
import pytest

from flan_moe.evaluation import bootstrap
from flan_moe.evaluation.bootstrap import Component


def test_hand_computed_case():
    # Subtask "a" = (1, 1, 0): a resample has k ~ Binomial(3, 2/3) correct, so its accuracy is
    # 0, 1/3, 2/3, 1 with probabilities 1/27, 6/27, 12/27, 8/27. Subtask "b" = (1,) is always 1.
    # macro = (acc_a + 1) / 2: the 2.5th percentile is at acc_a = 0 (P = 1/27 = 0.037 > 0.025)
    # -> 0.5, the 97.5th at acc_a = 1 (P(acc_a <= 2/3) = 19/27 = 0.70 < 0.975) -> 1.0;
    # the point estimate is (2/3 + 1) / 2 = 5/6.
    outcomes = {"a": [1, 1, 0], "b": [1]}
    macro = bootstrap.interval([Component(outcomes, "macro")], num_samples=4000)
    assert (macro.value, macro.low, macro.high) == pytest.approx((5 / 6, 0.5, 1.0))
    # micro = (k + 1) / 4: point 3/4, interval [1/4, 1].
    micro = bootstrap.interval([Component(outcomes, "micro")], num_samples=4000)
    assert (micro.value, micro.low, micro.high) == pytest.approx((0.75, 0.25, 1.0))
    # The resampled accuracies of "a" follow the distribution above (4 binomial sigmas).
    draws = bootstrap._draws("a", 3, 20000, 0)
    acc = np.asarray([1, 1, 0])[draws].mean(axis=1)
    for value, prob in zip((0, 1 / 3, 2 / 3, 1), (1 / 27, 6 / 27, 12 / 27, 8 / 27)):
        freq = np.isclose(acc, value).mean()
        assert abs(freq - prob) < 4 * math.sqrt(prob * (1 - prob) / 20000)


def test_bbh_task_statistic_and_determinism():
    # files f1, f2 form task t; f3 is its own task: (mean(1, 0) + 1/2) / 2 = 0.5
    comp = Component({"f1": [1], "f2": [0], "f3": [1, 0]}, "bbh_tasks", {"f1": "t", "f2": "t"})
    first = bootstrap.interval([comp])
    assert first.value == pytest.approx(0.5)
    assert bootstrap.interval([comp]) == first  # fixed seed: the same interval every time


def _synthetic(n: int, p: float, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(n, dtype=np.int64)
    out[rng.permutation(n)[: int(round(p * n))]] = 1
    return out


def test_matches_the_normal_approximation_on_a_large_sample():
    # Statistical tolerance: the percentile endpoints of 2000 resamples wander by a few % of
    # the half-width; 10% is far above that and far below a wrong variance (e.g. no
    # within-subtask resampling would change the width by > 50%).
    rng = np.random.default_rng(1)
    ps = np.linspace(0.1, 0.9, 10)
    outcomes = {f"s{i}": _synthetic(1000, p, rng) for i, p in enumerate(ps)}
    found = bootstrap.interval([Component(outcomes, "macro")], num_samples=2000)
    se = math.sqrt(sum(p * (1 - p) / 1000 for p in ps)) / len(ps)
    assert found.value == pytest.approx(np.mean(ps))
    assert found.low == pytest.approx(found.value - 1.96 * se, abs=0.1 * 1.96 * se)
    assert found.high == pytest.approx(found.value + 1.96 * se, abs=0.1 * 1.96 * se)


def test_paired_difference_matches_the_normal_approximation():
    # a and b agree except on 10% of questions: 6% only a right, 4% only b right.
    n, rng = 5000, np.random.default_rng(2)
    base = _synthetic(n, 0.5, rng)
    a, b = base.copy(), base.copy()
    order = rng.permutation(n)
    a[order[:300]], b[order[:300]] = 1, 0
    a[order[300:500]], b[order[300:500]] = 0, 1
    found = bootstrap.paired_difference(
        [Component({"x": a}, "micro")], [Component({"x": b}, "micro")], num_samples=2000
    )
    d = (a - b).astype(float)
    se = d.std() / math.sqrt(n)
    assert found.value == pytest.approx(0.02)
    assert found.low == pytest.approx(0.02 - 1.96 * se, abs=0.1 * 1.96 * se)
    assert found.high == pytest.approx(0.02 + 1.96 * se, abs=0.1 * 1.96 * se)
    assert found.significant
    # The unpaired intervals overlap a lot: pairing is what makes this difference visible.
    same = bootstrap.paired_difference([Component({"x": a})], [Component({"x": a})])
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0) and not same.significant


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="same questions"):
        bootstrap.paired_difference([Component({"x": [1, 0]})], [Component({"x": [1]})])
    with pytest.raises(ValueError, match="0/1"):
        bootstrap.interval([Component({"x": [2]})])
    with pytest.raises(ValueError, match="statistic"):
        Component({"x": [1]}, "median")
    assert bootstrap.outcomes_from_bits({"x": "0110"})["x"].tolist() == [0, 1, 1, 0]


def test_single_question_subtasks_are_pooled():
    # Four subtasks of one question each (1, 0, 0, 0): resampled as one stratum, macro =
    # Binomial(4, 1/4) / 4: P(0) = 0.316 > 0.025 -> low 0; P(<= 2/4) = 0.949 < 0.975 and
    # P(<= 3/4) = 0.996 -> high 0.75. (Within each subtask alone it would be [0.25, 0.25].)
    outcomes = {"a": [1], "b": [0], "c": [0], "d": [0]}
    found = bootstrap.interval([Component(outcomes, "macro")], num_samples=4000)
    assert (found.value, found.low, found.high) == pytest.approx((0.25, 0.0, 0.75))
    same = bootstrap.paired_difference([Component(outcomes)], [Component(outcomes)])
    assert (same.low, same.high) == (0.0, 0.0)
