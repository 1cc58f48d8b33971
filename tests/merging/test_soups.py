"""Identities of the soups and task-vector merges (lineage.md section 4), float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.merging import soups

TOL = 1e-5


def tree(seed: int, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    return {
        "a": {"kernel": jnp.asarray(rng.normal(size=(4, 6)) * scale, jnp.float32)},
        "b": jnp.asarray(rng.normal(size=(7,)) * scale, jnp.float32),
        "step": jnp.asarray(3, jnp.int32),
    }


def close(x, y, tol=TOL):
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=tol, atol=tol), x, y)


def test_uniform_average_of_copies_is_the_model():
    theta = tree(0)
    close(soups.uniform([theta] * 5), theta)
    close(soups.warm(tree(9), [theta] * 3), theta)


def test_linear_is_the_weighted_mean_by_hand():
    x, y = tree(0), tree(1)
    got = soups.linear([x, y], [1.0, 3.0])
    np.testing.assert_allclose(got["b"], 0.25 * x["b"] + 0.75 * y["b"], rtol=TOL, atol=TOL)
    unnorm = soups.linear([x, y], [1.0, 3.0], normalize=False)
    np.testing.assert_allclose(unnorm["b"], x["b"] + 3 * y["b"], rtol=TOL, atol=TOL)


def test_task_arithmetic_lambda_zero_is_base_and_one_model_lambda_one_is_it():
    base, models = tree(0), [tree(1), tree(2)]
    close(soups.task_arithmetic(base, models, lam=0.0), base)
    close(soups.task_arithmetic(base, models[:1], lam=1.0), models[0])


def test_ties_density_one_agreeing_signs_is_weighted_mean():
    base = tree(0)
    # every task vector has the same sign pattern: delta_i = c_i * |d| * s
    d = tree(5)
    models = [
        jax.tree_util.tree_map(
            lambda b, x, c=c: b + c * jnp.abs(x) if b.dtype == jnp.float32 else b, base, d
        )
        for c in (0.5, 1.0, 2.0)
    ]
    w = [1.0, 2.0, 3.0]
    mean = soups.linear(models, w)
    close(soups.ties(base, models, w, density=1.0), mean)


def test_ties_sign_election_and_disjoint_mean_hand_worked():
    base = {"x": jnp.zeros(3, jnp.float32)}
    m1 = {"x": jnp.asarray([1.0, -2.0, 0.5])}
    m2 = {"x": jnp.asarray([3.0, 1.0, -0.5])}
    got = soups.ties(base, [m1, m2], density=1.0)["x"]
    # entry 0: both +, mean 2; entry 1: sum -1 -> '-', only m1 agrees: -2;
    # entry 2: sum 0 -> '+' (ties go to +), only m1: 0.5
    np.testing.assert_allclose(got, [2.0, -2.0, 0.5], rtol=TOL, atol=TOL)


def test_magnitude_mask_keeps_top_k_per_tensor():
    d = jnp.asarray([[0.1, -5.0, 2.0], [-0.3, 4.0, 0.0]])
    mask = soups.magnitude_mask(d, 0.5)  # k = 3
    np.testing.assert_array_equal(mask, [[False, True, True], [False, True, False]])


def test_dare_density_one_is_identity():
    base, model = tree(0), tree(1)
    for rescale in ("inverse_density", "l1", "none"):
        close(soups.dare(base, [model], density=1.0, seed=0, rescale=rescale), model)


def test_dare_l1_rule_preserves_l1_norm_and_inverse_density_does_not_exactly():
    delta = jnp.asarray(np.random.default_rng(3).normal(size=(50, 40)), jnp.float32)
    key = jax.random.PRNGKey(7)
    l1 = soups.dare_delta(delta, key, density=0.3, rescale="l1")
    inv = soups.dare_delta(delta, key, density=0.3, rescale="inverse_density")
    norm = float(jnp.abs(delta).sum())
    np.testing.assert_allclose(float(jnp.abs(l1).sum()), norm, rtol=TOL)
    assert abs(float(jnp.abs(inv).sum()) - norm) / norm > TOL  # only in expectation
    kept = np.asarray(l1) != 0
    assert 0.2 < kept.mean() < 0.4
    np.testing.assert_allclose(np.asarray(inv)[kept], np.asarray(delta)[kept] / 0.3, rtol=TOL)


def test_greedy_soup_adds_only_when_score_does_not_drop():
    good, also_good, bad = tree(0), tree(0), tree(1, scale=10.0)

    def score(p):  # higher when b is close to good's b
        return -float(jnp.abs(p["b"] - good["b"]).sum())

    soup, chosen, _ = soups.greedy_soup([bad, good, also_good], score)
    assert chosen == [1, 2]
    close(soup, good)


def test_mismatched_models_and_weights_are_errors():
    x = tree(0)
    y = {"a": {"kernel": jnp.zeros((4, 5))}, "b": x["b"], "step": x["step"]}
    with pytest.raises(ValueError, match="architecture"):
        soups.uniform([x, y])
    with pytest.raises(ValueError, match="one per model"):
        soups.linear([x, x], [1.0])
    z = {**x, "step": jnp.asarray(4, jnp.int32)}
    with pytest.raises(ValueError, match="integer leaves"):
        soups.uniform([x, z])
