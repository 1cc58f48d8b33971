"""Routing statistics: random baselines, constant routers, load sums, padding."""

from __future__ import annotations

import numpy as np
import pytest

from flan_moe.analysis import statistics as st
from flan_moe.analysis.collector import RoutingCollector


def test_random_baselines_match_mixtral_numbers():
    # Mixtral (Jiang et al. 2024, "Routing analysis"): 12.5% and 46.4% for E = 8, k = 2.
    first, overlap = st.random_baselines(8, 2)
    assert first == pytest.approx(0.125, abs=1e-12)
    assert overlap == pytest.approx(1 - 15 / 28, abs=1e-12)
    assert round(overlap * 100, 1) == 46.4


def test_uniform_random_router_gives_random_baselines_within_one_percent():
    rng = np.random.default_rng(0)
    e, k = 8, 2
    probs = rng.random((2000, 501, e), dtype=np.float32)
    valid = np.ones((2000, 501), dtype=bool)
    counts = st.repeat_counts(st.top_k_choices(probs, k), st.pair_mask(valid))
    first, overlap = st.random_baselines(e, k)
    assert counts["pairs"] == 2000 * 500
    assert counts["same_first"] / counts["pairs"] == pytest.approx(first, rel=0.01)
    assert counts["topk_overlap"] / counts["pairs"] == pytest.approx(overlap, rel=0.01)


def _constant_router(n: int, length: int, e: int) -> np.ndarray:
    probs = np.full((n, length, e), 0.05, dtype=np.float32)
    probs[..., 3] = 1.0 - 0.05 * (e - 1)
    return probs


def test_constant_router_repeats_always():
    probs = _constant_router(4, 9, 8)
    valid = np.ones((4, 9), dtype=bool)
    valid[1, 5:] = False
    counts = st.repeat_counts(st.top_k_choices(probs, 2), st.pair_mask(valid))
    assert counts["pairs"] == 3 * 8 + 4
    assert counts["same_first"] == counts["pairs"]
    assert counts["topk_overlap"] == counts["pairs"]


def test_pairs_stop_at_padding_and_packing_boundaries():
    valid = np.array([[1, 1, 1, 1, 0, 0]], dtype=bool)
    segments = np.array([[1, 1, 2, 2, 0, 0]])
    np.testing.assert_array_equal(st.pair_mask(valid), [[1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(st.pair_mask(valid, segments), [[1, 0, 1, 0, 0]])


def test_loads_sum_to_k_times_valid_tokens_and_padding_never_counts():
    rng = np.random.default_rng(1)
    n, length, e, k = 6, 10, 4, 2
    probs = rng.random((n, length, e))
    valid = rng.random((n, length)) < 0.6
    load = st.load_counts(st.top_k_choices(probs, k), valid, e)
    assert load.sum() == k * valid.sum()
    # Changing what sits at padded positions changes nothing.
    other = probs.copy()
    other[~valid] = _constant_router(n, length, e)[~valid]
    collector_a, collector_b = RoutingCollector(vocab_size=20), RoutingCollector(vocab_size=20)
    tokens = rng.integers(2, 20, (n, length))
    kept = np.ones((n, length, e), dtype=bool)
    for collector, p in ((collector_a, probs), (collector_b, other)):
        collector.add(
            "encoder/layers_1",
            probs=p,
            kept=kept,
            valid=valid,
            tokens=tokens,
            row_tasks=["a", "b"] * 3,
            k=k,
        )
    summary_a = collector_a.summary(str)["encoder/layers_1"]
    summary_b = collector_b.summary(str)["encoder/layers_1"]
    assert summary_a == summary_b
    assert sum(summary_a["load_counts"]["all"]) == k * valid.sum()
    assert summary_a["tokens"] == valid.sum()


def test_collector_summary_entropy_drops_and_lift():
    e, k = 4, 1
    probs = np.zeros((2, 4, e))
    probs[..., 0] = 1.0  # every token to expert 0 except token id 7
    tokens = np.array([[5, 5, 7, 5], [5, 7, 5, 0]])
    probs[tokens == 7] = [0.0, 0.0, 1.0, 0.0]
    valid = tokens > 0
    kept = probs > 0
    kept[tokens == 7] = False  # expert 2's two choices were dropped
    collector = RoutingCollector(vocab_size=8)
    collector.add(
        "decoder/layers_0",
        probs=probs,
        kept=kept,
        valid=valid,
        tokens=tokens,
        row_tasks=["x", "y"],
        k=k,
    )
    s = collector.summary(lambda t: f"<{t}>", min_count=1)["decoder/layers_0"]
    assert s["tokens"] == 7
    assert s["drop_rate"] == pytest.approx(2 / 7)
    assert s["router_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["router_confidence"] == pytest.approx(1.0)
    assert s["load"]["all"] == pytest.approx([5 / 7, 0, 2 / 7, 0])
    top = s["top_tokens"][2]["by_lift"][0]
    assert (top["token"], top["count"], top["lift"]) == ("<7>", 2, pytest.approx(3.5))
    # Task x: 3 to expert 0, 1 to expert 2; task y: 2 and 1.
    assert s["load_counts"]["x"] == [3, 0, 1, 0]
    assert s["js_divergence"]["x"] > 0
    first, _ = st.random_baselines(e, 2)
    assert s["repeat"]["random_first_choice"] == first
