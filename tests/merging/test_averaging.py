"""EMA / SWA / LAWA identities (lineage.md section 3), float32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.merging import averaging

TOL = 1e-5


def tree(seed):
    rng = np.random.default_rng(seed)
    return {
        "w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32),
        "n": jnp.asarray(seed, jnp.int32),
    }


def test_ema_decay_zero_is_raw_and_one_is_frozen():
    ema, params = tree(0), tree(1)
    out = averaging.ema_update(ema, params, 0.0)
    np.testing.assert_array_equal(out["w"], params["w"])
    assert int(out["n"]) == 1  # integer leaves follow the live params
    np.testing.assert_array_equal(averaging.ema_update(ema, params, 1.0)["w"], ema["w"])
    np.testing.assert_allclose(
        averaging.ema_update(ema, params, 0.9)["w"],
        0.9 * ema["w"] + 0.1 * params["w"],
        rtol=TOL,
        atol=TOL,
    )


def test_ema_decay_warmup():
    assert averaging.ema_decay(5, update_after_step=5) == 0.0
    # t = 3, inv_gamma 1, power 1/2: 1 - 4 ** -0.5 = 0.5
    assert averaging.ema_decay(8, update_after_step=5, power=0.5, beta=0.99) == pytest.approx(
        0.5, abs=TOL
    )
    assert averaging.ema_decay(10**9, beta=0.9) == 0.9


def test_swa_running_mean_is_the_mean():
    models = [tree(s) for s in range(5)]
    avg = models[0]
    for n, m in enumerate(models[1:], 1):
        avg = averaging.swa_update(avg, m, n)
    np.testing.assert_allclose(
        avg["w"], np.mean([m["w"] for m in models], axis=0), rtol=TOL, atol=TOL
    )
    same = tree(3)
    acc = same
    for n in range(1, 4):
        acc = averaging.swa_update(acc, same, n)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=TOL, atol=TOL), acc, same
    )
