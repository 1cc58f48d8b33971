"""bootstrap.gap_closed: (proxy - base) / (tuned - base) with paired resampling."""

import numpy as np
import pytest

from flan_moe.evaluation import bootstrap
from flan_moe.evaluation.bootstrap import Component

OUTCOMES = {"a": [1, 1, 0], "b": [1]}  # test_bootstrap's hand-computed case


def _const(value: int) -> Component:
    return Component({n: [value] * len(v) for n, v in OUTCOMES.items()}, "macro")


def test_base_all_wrong_tuned_all_right_is_the_proxy_score():
    # Every resample has base 0 and tuned 1, so the ratio is the proxy's resampled score:
    # point 5/6, interval [0.5, 1.0] (test_bootstrap.test_hand_computed_case).
    found = bootstrap.gap_closed([Component(OUTCOMES)], [_const(0)], [_const(1)],
                                 num_samples=4000)  # fmt: skip
    assert (found.interval.value, found.interval.low, found.interval.high) == pytest.approx(
        (5 / 6, 0.5, 1.0)
    )
    assert found.undefined == 0 and found.num_samples == 4000


def test_proxy_equal_tuned_closes_the_whole_gap_and_counts_undefined_resamples():
    base = Component({"a": [0, 1, 0, 1]}, "micro")
    tuned = Component({"a": [1, 1, 0, 1]}, "micro")  # differs from base on question 0 only
    found = bootstrap.gap_closed([tuned], [base], [tuned], num_samples=500)
    assert (found.interval.value, found.interval.low, found.interval.high) == (1.0, 1.0, 1.0)
    # tuned == base exactly in the resamples that never draw question 0
    draws = bootstrap._draws("a", 4, 500, bootstrap.SEED)
    assert found.undefined == int((draws != 0).all(axis=1).sum()) > 0


def test_proxy_equal_base_closes_nothing_and_equal_models_are_undefined():
    base, tuned = _const(0), Component(OUTCOMES)
    found = bootstrap.gap_closed([base], [base], [tuned])
    assert found.interval.value == 0.0 and found.interval.low == found.interval.high == 0.0
    same = bootstrap.gap_closed([tuned], [base], [base])
    assert same.interval is None and same.undefined == bootstrap.NUM_SAMPLES


def test_the_three_sides_must_share_questions():
    other = Component({"a": [1, 0]}, "macro")
    with pytest.raises(ValueError, match="same questions"):
        bootstrap.gap_closed([Component(OUTCOMES)], [other], [_const(1)])
    with pytest.raises(ValueError, match="matching components"):
        bootstrap.gap_closed([], [], [])
    assert np.isfinite(bootstrap.gap_closed([_const(1)], [_const(0)], [_const(1)]).interval.low)
