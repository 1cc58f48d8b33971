"""Partitions of a dense FFN's d_ff hidden neurons into experts (LLaMA-MoE, lineage.md §2).

All functions are pure numpy and seeded. A partition is returned as a list of index
arrays (one per expert, each sorted); ``labels_to_groups`` converts a label vector.

* ``random_labels``: Independent-Random: labels [0..N-1] each repeated d_ff/N times, then
  shuffled (llama-moe ``expert_split.py``, ``random.shuffle``; here a seeded numpy
  generator).
* ``clustering_labels``: Independent-Clustering: balanced k-means (equal sizes d_ff/N) on
  the L2-normalised rows of a [d_ff, H] kernel, as llama-moe's ``KMeansConstrained(
  n_clusters=N, size_min=size_max=d_ff/N, max_iter=500)``; the equal-size assignment
  step is solved exactly by scipy's ``linear_sum_assignment``.
* ``sharing_inner``: expert e = the top-m neurons by its importance scores v_e.
* ``sharing_inter``: a residual block of the neurons most experts' top lists share, then
  a greedy disjoint assignment of the rest (``greedy_assignment``).
"""

from __future__ import annotations

import numpy as np

from flan_moe.construction.recipes import ConstructionError


def _check_divisible(d_ff: int, parts: int) -> int:
    if parts < 1 or d_ff % parts:
        raise ConstructionError(
            f"d_ff={d_ff} does not split into {parts} equal experts; choose an expert count "
            "that divides d_ff"
        )
    return d_ff // parts


def labels_to_groups(labels: np.ndarray, num_groups: int) -> list[np.ndarray]:
    """Index arrays (sorted) of each label 0..num_groups-1."""
    labels = np.asarray(labels)
    return [np.flatnonzero(labels == g) for g in range(num_groups)]


def random_labels(d_ff: int, num_experts: int, *, seed: int) -> np.ndarray:
    """Independent-Random: a seeded shuffle of [0..N-1] each repeated d_ff/N times."""
    size = _check_divisible(d_ff, num_experts)
    labels = np.repeat(np.arange(num_experts), size)
    return np.random.default_rng(seed).permutation(labels)


def clustering_labels(
    kernel_rows: np.ndarray,
    num_experts: int,
    *,
    seed: int,
    max_iter: int = 500,
    n_init: int = 10,
) -> np.ndarray:
    """Independent-Clustering: balanced k-means on L2-normalised rows [d_ff, H].

    Constrained k-means (Bradley, Bennett & Demiriz 2000; what llama-moe's
    ``KMeansConstrained(size_min=size_max=d_ff/N)`` solves with a min-cost flow): with
    equal sizes the assignment step is a linear assignment of the d_ff rows to N x size
    slots, solved exactly by ``scipy.optimize.linear_sum_assignment``. ``n_init`` seeded
    starts (k-means++ centres); the lowest inertia wins. (The k-means-constrained package
    is not used: its OR-Tools dependency pins protobuf < 6.34, which cannot load
    sentencepiece 0.2.3's generated model proto.)
    """
    rows = np.asarray(kernel_rows, np.float64)
    size = _check_divisible(rows.shape[0], num_experts)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    normalised = rows / np.where(norms == 0, 1.0, norms)
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        labels, inertia = _balanced_kmeans(normalised, num_experts, size, rng, max_iter)
        if inertia < best_inertia - 1e-12:
            best, best_inertia = labels, inertia
    return best


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        d2 = ((x[:, None, :] - np.asarray(centres)[None]) ** 2).sum(-1).min(axis=1)
        p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1.0 / len(x))
        centres.append(x[rng.choice(len(x), p=p)])
    return np.asarray(centres)


def _balanced_kmeans(
    x: np.ndarray, k: int, size: int, rng: np.random.Generator, max_iter: int
) -> tuple[np.ndarray, float]:
    """(labels, inertia) of one constrained k-means run with clusters of exactly ``size``."""
    from scipy.optimize import linear_sum_assignment

    centres, labels = _kmeans_plus_plus(x, k, rng), None
    for _ in range(max_iter):
        cost = ((x[:, None, :] - centres[None]) ** 2).sum(-1)  # [n, k]
        rows, slots = linear_sum_assignment(np.repeat(cost, size, axis=1))  # k*size slots
        new = np.empty(len(x), np.int64)
        new[rows] = slots // size
        if labels is not None and np.array_equal(new, labels):
            break
        labels = new
        centres = np.stack([x[labels == c].mean(axis=0) for c in range(k)])
    inertia = float(((x - centres[labels]) ** 2).sum())
    return labels, inertia


def _check_scores(scores: np.ndarray, num_experts: int) -> np.ndarray:
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2 or scores.shape[0] != num_experts:
        raise ConstructionError(
            f"importance scores must be [num_experts={num_experts}, d_ff], got {scores.shape}; "
            "pass one score vector per expert's data group"
        )
    if not np.all(np.isfinite(scores)):
        raise ConstructionError("importance scores contain NaN or Inf")
    return scores


def _top(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices of the m largest scores (ties: lower index first), sorted ascending."""
    order = np.lexsort((np.arange(scores.size), -scores))
    return np.sort(order[:m])


def sharing_inner(scores: np.ndarray, expert_size: int) -> list[np.ndarray]:
    """Sharing-Inner: expert e = the top-``expert_size`` neurons by ``scores[e]``."""
    scores = _check_scores(scores, scores.shape[0] if np.ndim(scores) == 2 else -1)
    if not 1 <= expert_size <= scores.shape[1]:
        raise ConstructionError(f"expert_size {expert_size} must be in 1..d_ff={scores.shape[1]}")
    return [_top(row, expert_size) for row in scores]


def greedy_assignment(scores: np.ndarray, neurons: np.ndarray, capacity: int) -> list[np.ndarray]:
    """Disjoint experts of ``capacity`` neurons each from ``neurons``: repeatedly take the
    highest remaining (expert, neuron) score among experts that are not full (llama-moe's
    gradient split without sharing). ``len(neurons)`` must equal N * capacity."""
    num_experts = scores.shape[0]
    neurons = np.asarray(neurons)
    if neurons.size != num_experts * capacity:
        raise ConstructionError(
            f"{neurons.size} neurons do not fill {num_experts} experts of {capacity}"
        )
    sub = scores[:, neurons]
    flat = np.lexsort((np.arange(sub.size), -sub.reshape(-1)))
    taken = np.zeros(neurons.size, bool)
    groups: list[list[int]] = [[] for _ in range(num_experts)]
    for index in flat:
        expert, column = divmod(int(index), neurons.size)
        if taken[column] or len(groups[expert]) == capacity:
            continue
        taken[column] = True
        groups[expert].append(int(neurons[column]))
    return [np.sort(np.asarray(g, np.int64)) for g in groups]


def sharing_inter(
    scores: np.ndarray, *, num_residual: int, expert_size: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sharing-Inter: (residual neurons, routed experts), disjoint and covering d_ff.

    The residual block takes the ``num_residual * expert_size`` neurons that appear in
    the most experts' top-``expert_size`` lists (ties broken by total importance, then
    index); the routed experts split the remaining neurons greedily by importance.
    """
    scores = _check_scores(scores, scores.shape[0] if np.ndim(scores) == 2 else -1)
    num_experts, d_ff = scores.shape
    residual_size = num_residual * expert_size
    if residual_size + num_experts * expert_size != d_ff:
        raise ConstructionError(
            f"residual ({num_residual} x {expert_size}) + routed ({num_experts} x "
            f"{expert_size}) neurons must equal d_ff={d_ff}"
        )
    votes = np.zeros(d_ff, np.int64)
    for row in scores:
        votes[_top(row, expert_size)] += 1
    order = np.lexsort((np.arange(d_ff), -scores.sum(axis=0), -votes))
    residual = np.sort(order[:residual_size])
    rest = np.sort(order[residual_size:])
    return residual, greedy_assignment(scores, rest, expert_size)
