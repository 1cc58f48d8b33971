"""Partitions of d_ff into experts: sizes, permutations, reproducibility, hand-worked cases."""

import numpy as np
import pytest

from flan_moe.construction import ConstructionError, partition


def _assert_partition(groups, d_ff, size):
    assert all(len(g) == size for g in groups)
    np.testing.assert_array_equal(np.sort(np.concatenate(groups)), np.arange(d_ff))


def test_random_labels_are_a_seeded_permutation_with_exact_sizes():
    labels = partition.random_labels(48, 6, seed=3)
    assert np.bincount(labels).tolist() == [8] * 6
    _assert_partition(partition.labels_to_groups(labels, 6), 48, 8)
    np.testing.assert_array_equal(labels, partition.random_labels(48, 6, seed=3))
    assert not np.array_equal(labels, partition.random_labels(48, 6, seed=4))
    with pytest.raises(ConstructionError, match="does not split into 5 equal experts"):
        partition.random_labels(48, 5, seed=0)


def test_balanced_clustering_exact_sizes_and_reproducible():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 5
    rows = np.concatenate([c + rng.normal(size=(8, 16)) for c in centres])[rng.permutation(32)]
    labels = partition.clustering_labels(rows, 4, seed=0)
    assert np.bincount(labels).tolist() == [8] * 4
    np.testing.assert_array_equal(labels, partition.clustering_labels(rows, 4, seed=0))
    # Well-separated clusters of exactly the right size are recovered: each holds one centre's rows.
    norms = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    for g in partition.labels_to_groups(labels, 4):
        sims = norms[g] @ norms[g].T
        assert sims.min() > 0.5  # each cluster holds rows of one centre


def test_balanced_clustering_reaches_the_brute_force_optimum():
    import itertools

    rows = np.random.default_rng(5).normal(size=(8, 3))
    x = rows / np.linalg.norm(rows, axis=1, keepdims=True)

    def inertia(group):
        other = np.setdiff1d(np.arange(8), group)
        return sum(((x[g] - x[g].mean(0)) ** 2).sum() for g in (np.asarray(group), other))

    optimum = min(inertia(c) for c in itertools.combinations(range(8), 4))
    labels = partition.clustering_labels(rows, 2, seed=0)
    assert np.bincount(labels).tolist() == [4, 4]
    assert inertia(np.flatnonzero(labels == 0)) == pytest.approx(optimum, abs=1e-9)


def test_sharing_inner_takes_each_experts_top_neurons_and_may_overlap():
    scores = np.array([[5.0, 4, 3, 2, 1, 0], [0.0, 4, 5, 1, 2, 3]])
    groups = partition.sharing_inner(scores, 3)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [1, 2, 5]]


def test_greedy_assignment_hand_worked():
    # Highest pairs first: (e1, n2)=9, (e0, n0)=8, (e0, n2) taken, (e1, n1)=6 -> e1 full,
    # (e0, n3)=5 -> e0 full; neuron 1 is taken by e1.
    scores = np.array([[8.0, 1, 7, 5], [2.0, 6, 9, 0]])
    groups = partition.greedy_assignment(scores, np.arange(4), 2)
    assert [g.tolist() for g in groups] == [[0, 3], [1, 2]]


def test_sharing_inter_residual_and_routed_are_disjoint_and_cover_d_ff():
    # Top-2 lists: e0 {0, 1}, e1 {1, 2}, e2 {1, 3}: neuron 1 has 3 votes -> residual (size 2:
    # next by votes 0/2/3 with one vote each, tie broken by total importance: neuron 3).
    # The rest {0, 2, 4, 5, 6, 7} go greedily: (e0, 0)=9, (e1, 2)=9, then the 1s (e1, 6),
    # (e2, 5), then the 0s in expert-major order: (e0, 4), (e2, 7).
    scores = np.array(
        [[9.0, 8, 1, 2, 0, 0, 0, 0], [1.0, 8, 9, 3, 0, 0, 1, 0], [0.0, 9, 1, 8, 0, 1, 0, 0]]
    )
    residual, routed = partition.sharing_inter(scores, num_residual=1, expert_size=2)
    assert residual.tolist() == [1, 3]
    assert [g.tolist() for g in routed] == [[0, 4], [2, 6], [5, 7]]
    _assert_partition([residual, *routed], 8, 2)
    rng = np.random.default_rng(1)
    residual, routed = partition.sharing_inter(rng.random((6, 64)), num_residual=2, expert_size=8)
    _assert_partition([residual[:8], residual[8:], *routed], 64, 8)
    with pytest.raises(ConstructionError, match="must equal d_ff"):
        partition.sharing_inter(rng.random((6, 64)), num_residual=1, expert_size=8)
