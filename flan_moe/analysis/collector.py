"""Accumulate routing statistics over batches, per sparse layer, and summarise them as JSON.

``RoutingCollector.add`` takes one layer's per-token arrays for one batch (numpy; see
``statistics`` for shapes) and the task of each row; everything is kept as counts and sums,
so batches combine exactly. ``summary`` returns the JSON-ready dictionary written by
``flan_moe.cli.analyze`` (schema in ``summary``'s docstring).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from flan_moe.analysis import statistics as st


@dataclasses.dataclass
class LayerCounts:
    """Running counts of one sparse layer."""

    num_experts: int
    k: int | None  # None: expert choice (first choice/top-1 are still by probability)
    vocab_size: int
    load: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    pairs: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"pairs": 0, "same_first": 0, "topk_overlap": 0}
    )
    tokens: int = 0
    entropy_sum: float = 0.0
    confidence_sum: float = 0.0
    dropped: int = 0
    dropped_of: int = 0
    token_expert: np.ndarray | None = None


class RoutingCollector:
    """Counts per layer name (e.g. ``"encoder/layers_1"``)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.layers: dict[str, LayerCounts] = {}

    def add(
        self,
        layer: str,
        *,
        probs: np.ndarray,
        kept: np.ndarray,
        valid: np.ndarray,
        tokens: np.ndarray,
        row_tasks: Sequence[str],
        k: int | None,
        segment_ids: np.ndarray | None = None,
    ) -> None:
        probs, valid = np.asarray(probs), np.asarray(valid, dtype=bool)
        if probs.shape[:2] != valid.shape or len(row_tasks) != valid.shape[0]:
            raise ValueError(
                f"layer {layer}: probs {probs.shape}, valid {valid.shape} and "
                f"{len(row_tasks)} row tasks disagree; pass one task per row"
            )
        e = probs.shape[-1]
        counts = self.layers.setdefault(layer, LayerCounts(e, k, self.vocab_size))
        choices = st.top_k_choices(probs, k or 1)
        for task in sorted(set(row_tasks)):
            rows = np.array([t == task for t in row_tasks])
            load = st.load_counts(choices[rows], valid[rows], e)
            counts.load[task] = counts.load.get(task, np.zeros(e, np.int64)) + load
        # "First or second": the top-max(k, 2) sets by probability (Mixtral's measure).
        overlap_choices = st.top_k_choices(probs, _overlap_k(k, e))
        pairs = st.pair_mask(valid, segment_ids)
        for name, value in st.repeat_counts(overlap_choices, pairs).items():
            counts.pairs[name] += value
        counts.tokens += int(valid.sum())
        entropy, confidence = st.entropy_confidence_sums(probs, valid)
        counts.entropy_sum += entropy
        counts.confidence_sum += confidence
        dropped, of = st.dropped_count(kept, valid, k)
        counts.dropped += dropped
        counts.dropped_of += of
        table = st.token_expert_counts(tokens, choices[..., 0], valid, (e, self.vocab_size))
        counts.token_expert = table if counts.token_expert is None else counts.token_expert + table

    def summary(
        self, decode_token: Callable[[int], str], *, top: int = 10, min_count: int = 5
    ) -> dict:
        """{layer: {...}} with, per layer:

        num_experts, k, tokens (valid tokens seen); load: {task: normalised [e]}, plus
        "all"; load_counts: raw counts (sum to k x tokens per task); js_divergence: {task:
        JS divergence (bits) of the task's load from the global load}; repeat:
        {pairs, first_choice, topk_overlap, random_first_choice, random_topk_overlap};
        router_entropy, router_confidence (means over tokens); drop_rate; top_tokens: per
        expert {by_count, by_lift: [{token, id, count, lift}]}.
        """
        return {
            name: _layer_summary(c, decode_token, top, min_count) for name, c in self.layers.items()
        }


def _layer_summary(c: LayerCounts, decode_token, top: int, min_count: int) -> dict:
    total = sum(c.load.values())
    k_pairs = _overlap_k(c.k, c.num_experts)
    random_first, random_overlap = st.random_baselines(c.num_experts, k_pairs)
    n_pairs = max(c.pairs["pairs"], 1)
    tables = st.top_tokens(c.token_expert, top=top, min_count=min_count)

    def rows(entries):
        return [
            {"token": decode_token(t), "id": t, "count": n, "lift": round(lift, 4)}
            for t, n, lift in entries
        ]

    return {
        "num_experts": c.num_experts,
        "k": c.k,
        "tokens": c.tokens,
        "load": {t: _normalise(v) for t, v in {**c.load, "all": total}.items()},
        "load_counts": {t: v.tolist() for t, v in {**c.load, "all": total}.items()},
        "js_divergence": {t: st.js_divergence(v, total) for t, v in c.load.items()},
        "repeat": {
            "pairs": c.pairs["pairs"],
            "first_choice": c.pairs["same_first"] / n_pairs,
            "topk_overlap": c.pairs["topk_overlap"] / n_pairs,
            "overlap_k": k_pairs,
            "random_first_choice": random_first,
            "random_topk_overlap": random_overlap,
        },
        "router_entropy": c.entropy_sum / max(c.tokens, 1),
        "router_confidence": c.confidence_sum / max(c.tokens, 1),
        "drop_rate": c.dropped / max(c.dropped_of, 1),
        "top_tokens": [
            {"expert": i, "by_count": rows(t["by_count"]), "by_lift": rows(t["by_lift"])}
            for i, t in enumerate(tables)
        ],
    }


def _overlap_k(k: int | None, num_experts: int) -> int:
    return min(max(k or 1, 2), num_experts)


def _normalise(v: np.ndarray) -> list[float]:
    s = v.sum()
    return (v / s).tolist() if s > 0 else [0.0] * len(v)
