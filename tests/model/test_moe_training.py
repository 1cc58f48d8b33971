"""Tiny Switch, GShard, Expert-Choice and ST-MoE models train: loss falls, router losses finite.

A self-contained optax loop (the project's trainer lives in flan_moe/training); the loss
is the model loss the trainer uses: CE + aux_loss_coef * load_balancing_loss +
router_z_loss_coef * router_z_loss, from ``collect_router_losses``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from flan_moe.model.config import get_config
from flan_moe.model.moe import collect_moe_metrics, collect_router_losses
from flan_moe.model.transformer import EncoderDecoder


def toy_batch(seed=0, batch=4, inputs=12, targets=6, vocab=64):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (batch, inputs)).astype(np.int32)
    enc[0, -3:] = 0  # some padding
    tgt = rng.integers(2, vocab, (batch, targets)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return jnp.asarray(enc), jnp.asarray(dec_in), jnp.asarray(tgt)


def random_params(model, *inputs, seed=0):
    """Params of the model's shapes drawn with numpy (compiling ``init`` costs ~10 s on CPU).

    Embedding normal(1), norms 1, router kernels normal(0.02) (as the real init), other
    matrices normal / sqrt(d_model).
    """
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *inputs))["params"]
    rng = np.random.default_rng(seed)
    d_model = model.config.d_model
    flat = traverse_util.flatten_dict(nn.unbox(abstract), sep="/")
    params = {}
    for name, leaf in sorted(flat.items()):
        if name.endswith("/scale"):
            value = np.ones(leaf.shape)
        elif name.endswith("embedding") and "rel_" not in name:
            value = rng.normal(size=leaf.shape)
        elif "/router/" in name:
            value = rng.normal(size=leaf.shape) * 0.02
        else:
            value = rng.normal(size=leaf.shape) / np.sqrt(d_model)
        params[name] = jnp.asarray(value, leaf.dtype)
    return traverse_util.unflatten_dict(params, sep="/")


@pytest.mark.parametrize("name", ["switch_tiny_8", "gs_tiny", "ec_tiny", "st_moe_tiny"])
def test_tiny_moe_trains(name):
    config = get_config(name, dtype="float32")
    moe = config.moe
    model = EncoderDecoder(config)
    enc, dec_in, tgt = toy_batch()
    params = random_params(model, enc, dec_in, tgt)
    optimizer = optax.adam(3e-3)
    opt_state = optimizer.init(params)

    def loss_fn(params, rng):
        logits, state = model.apply(
            {"params": params}, enc, dec_in, tgt, enable_dropout=True, rngs={"dropout": rng},
            mutable=["moe_losses", "moe_metrics"],
        )  # fmt: skip
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, tgt).mean()
        losses = collect_router_losses(state["moe_losses"])
        total = (
            ce
            + moe.aux_loss_coef * losses["load_balancing_loss"]
            + moe.router_z_loss_coef * losses["router_z_loss"]
        )
        return total, (ce, losses, collect_moe_metrics(state["moe_metrics"]))

    @jax.jit
    def step(params, opt_state, rng):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, rng)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, aux

    ces = []
    for i in range(20):
        params, opt_state, (ce, losses, metrics) = step(params, opt_state, jax.random.PRNGKey(i))
        ces.append(float(ce))
        for value in (*losses.values(), *metrics.values()):
            assert np.all(np.isfinite(np.asarray(value)))
    assert ces[-1] < 0.8 * ces[0], ces
    assert float(losses["load_balancing_loss"]) > 0  # every tiny model has a top-k stack
    if moe.router_z_loss_coef > 0:
        assert float(losses["router_z_loss"]) > 0
    if moe.encoder_router == "experts_choose":
        # Balanced by construction: 0, counted in the mean over layers (flaxformer / t5x).
        assert float(losses["encoder/load_balancing_loss"]) == 0.0
