"""Adafactor against a NumPy reference, the expert axis as a batch dim, schedules, freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flan_moe.training.optimizers import (
    OptimizerConfig,
    constant_schedule,
    cosine_schedule,
    make_optimizer,
    rsqrt_schedule,
    scale_by_adafactor,
    trainable_mask,
)


def _reference_adafactor(param, grads, *, factored, lr=1.0):
    """Adafactor (Shazeer & Stern 2018, Alg. 4 without momentum) in float64 NumPy loops.

    beta2_t = 1 - t^-0.8; eps1 = 1e-30 added to g^2; update clipped to RMS <= 1;
    step size = lr * max(1e-3, RMS(param)). For a [n, m] param with m >= n the row
    statistic averages over the columns (R [n]) and the column one over rows (C [m]).
    """
    p = param.astype(np.float64).copy()
    n, m = p.shape if p.ndim == 2 else (p.shape[0], 1)
    r, c, v = np.zeros(n), np.zeros(m), np.zeros(p.shape)
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        beta2 = 1.0 - t**-0.8
        g2 = g**2 + 1e-30
        u = np.zeros(p.shape)
        if factored:
            for i in range(n):
                r[i] = beta2 * r[i] + (1 - beta2) * np.mean(g2[i, :])
            for j in range(m):
                c[j] = beta2 * c[j] + (1 - beta2) * np.mean(g2[:, j])
            for i in range(n):
                for j in range(m):
                    vhat = r[i] * c[j] / np.mean(r)
                    u[i, j] = g[i, j] / np.sqrt(vhat)
        else:
            v = beta2 * v + (1 - beta2) * g2
            u = g / np.sqrt(v)
        u = u / max(1.0, np.sqrt(np.mean(u**2)))
        step = lr * max(1e-3, np.sqrt(np.mean(p**2)))
        p = p - step * u
    return p


def _run(tx, param, grads, lr=1.0):
    state = tx.init(param)
    p = param
    for g in grads:
        u, state = tx.update(g, state, p)
        p = jax.tree_util.tree_map(lambda a, b: a - lr * b, p, u)
    return jax.tree_util.tree_map(np.asarray, p)


@pytest.mark.parametrize("shape, factored", [((4, 6), True), ((5,), False), ((3, 4), False)])
def test_adafactor_matches_reference(shape, factored):
    rng = np.random.default_rng(0)
    param = rng.normal(size=shape).astype(np.float32)
    grads = [rng.normal(size=shape).astype(np.float32) * s for s in (1.0, 0.1, 3.0)]
    # min_dim_size_to_factor decides: 4 >= 4 factors the [4, 6]; 3 < 4 leaves [3, 4] whole.
    tx = scale_by_adafactor(min_dim_size_to_factor=4)
    ours = _run(tx, jnp.asarray(param), [jnp.asarray(g) for g in grads])
    ref = _reference_adafactor(param, grads, factored=factored)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_adafactor_treats_expert_axis_as_batch():
    """An [expert, d, f] param is updated as E independent [d, f] matrices."""
    rng = np.random.default_rng(1)
    param = rng.normal(size=(3, 4, 6)).astype(np.float32)
    param[1] *= 10.0  # experts at different scales: per-expert parameter scale matters
    grads = [rng.normal(size=param.shape).astype(np.float32) for _ in range(3)]
    grads[1][2] *= 100.0  # and per-expert clipping / statistics
    tx = scale_by_adafactor(param_axes={"w": ("expert", "embed", "mlp")}, min_dim_size_to_factor=4)
    ours = _run(tx, {"w": jnp.asarray(param)}, [{"w": jnp.asarray(g)} for g in grads])["w"]
    for e in range(3):
        ref = _reference_adafactor(param[e], [g[e] for g in grads], factored=True)
        np.testing.assert_allclose(ours[e], ref, rtol=1e-5, atol=1e-6)


def test_schedules_hand_values():
    rsqrt = rsqrt_schedule(learning_rate=1.0, warmup_steps=100)
    assert float(rsqrt(jnp.asarray(5))) == pytest.approx(0.1)
    assert float(rsqrt(jnp.asarray(400))) == pytest.approx(0.05)
    const = constant_schedule(learning_rate=1e-4, warmup_steps=0)
    assert float(const(jnp.asarray(123))) == pytest.approx(1e-4)
    warm = constant_schedule(learning_rate=1e-3, warmup_steps=10)
    assert float(warm(jnp.asarray(4))) == pytest.approx(5e-4)
    cos = cosine_schedule(learning_rate=1.0, warmup_steps=0, decay_steps=100, final_fraction=0.1)
    assert float(cos(jnp.asarray(0))) == pytest.approx(1.0)
    assert float(cos(jnp.asarray(50))) == pytest.approx(0.1 + 0.9 * 0.5)
    assert float(cos(jnp.asarray(100))) == pytest.approx(0.1)


_MOE_PARAMS = {
    "encoder": {
        "layers_0": {"mlp": {"wi": 0.0, "wo": 0.0}},
        "layers_1": {
            "moe": {
                "router": {"router_weights": {"kernel": 0.0}},
                "experts": {"wi": 0.0, "wo": 0.0},
            }
        },
    },
    "decoder": {"logits_dense": 0.0},
}


@pytest.mark.parametrize(
    "freeze, frozen",
    [
        ("none", []),
        ("gate", ["encoder/layers_1/moe/router/router_weights/kernel"]),
        ("expert", ["encoder/layers_1/moe/experts/wi", "encoder/layers_1/moe/experts/wo"]),
        (
            "moe",
            [
                "encoder/layers_1/moe/experts/wi",
                "encoder/layers_1/moe/experts/wo",
                "encoder/layers_1/moe/router/router_weights/kernel",
            ],
        ),
        ("regex:logits_dense|layers_0/", ["decoder/logits_dense", "encoder/layers_0/mlp/wi",
                                           "encoder/layers_0/mlp/wo"]),
    ],
)  # fmt: skip
def test_freeze_presets_and_regex(freeze, frozen):
    mask = trainable_mask(_MOE_PARAMS, freeze)
    from flan_moe.training.optimizers import path_str

    got = sorted(path_str(p) for p, t in jax.tree_util.tree_leaves_with_path(mask) if not t)
    assert got == sorted(frozen)


def test_freeze_matching_nothing_is_an_error():
    with pytest.raises(ValueError, match="matches no parameter"):
        trainable_mask({"encoder": {"mlp": {"wi": 0.0}}}, "gate")
    with pytest.raises(ValueError, match="unknown freeze setting"):
        OptimizerConfig(freeze="gates")


def test_frozen_params_carry_no_optimizer_state():
    params = {"a": jnp.ones((4, 4)), "b": jnp.ones((3,))}
    tx, _, mask = make_optimizer(OptimizerConfig(freeze="regex:^a$"), params=params)
    state = tx.init(params)
    shapes = [x.shape for x in jax.tree_util.tree_leaves(state)]
    assert (4, 4) not in shapes and (3,) in shapes
    updates, _ = tx.update({"a": jnp.ones((4, 4)), "b": jnp.ones((3,))}, state, params)
    assert np.all(np.asarray(updates["a"]) == 0) and mask == {"a": False, "b": True}
    assert isinstance(tx, optax.GradientTransformation)
