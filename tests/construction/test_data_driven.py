"""Importance scores (|h * dL/dh|) and hidden-state routers, checked by independent routes:
a central finite difference of the loss for dL/dh, Flax's own ``capture_intermediates``
for the MLP inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.construction import hidden_router, importance
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params

CONFIG = get_config("tiny", dtype="float32")


@pytest.fixture(scope="module")
def params():
    return random_params(EncoderDecoder(CONFIG), seed=0)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, 300, (2, 10)).astype(np.int32)
    enc[1, 7:] = 0
    targets = rng.integers(2, 300, (2, 5)).astype(np.int32)
    targets[0, 4:] = 0
    dec_in = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
    return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
            "decoder_target_tokens": targets}  # fmt: skip


def _loss(params, batch, deltas):
    logits, _ = importance.run_with_mlp_hooks(CONFIG, params, batch, deltas)
    logp = jax.nn.log_softmax(logits, axis=-1)
    t = jnp.asarray(batch["decoder_target_tokens"])
    nll = -jnp.take_along_axis(logp, t[..., None], axis=-1)[..., 0]
    w = (t > 0).astype(jnp.float32)
    return jnp.sum(nll * w) / jnp.sum(w)


def test_importance_matches_a_finite_difference_of_the_loss(params):
    """One real encoder token: the layer's score for unit j is |h_j * dL/dh_j| at that token;
    dL/dh_j is measured by perturbing h_j by +-eps (the MLP output by +-eps * wo[j])."""
    batch = _batch()
    batch["encoder_input_tokens"] = np.zeros_like(batch["encoder_input_tokens"])
    batch["encoder_input_tokens"][0, 0] = 17  # row 1 has no encoder tokens at all
    layer, unit = "encoder/layers_1", 5
    total, count = importance.batch_scores(CONFIG, params, batch)[layer]
    assert total.shape == (CONFIG.d_ff,) and count == 1 and np.all(total >= 0)
    mlp = params["encoder"]["layers_1"]["mlp"]
    eps = 1e-2

    def shifted(sign):
        delta = jnp.zeros((2, 10, CONFIG.d_model)).at[0, 0].set(sign * eps * mlp["wo"][unit])
        return _loss(params, batch, {layer: delta})

    dl_dh = float((shifted(1.0) - shifted(-1.0)) / (2 * eps))
    _, captured = importance.run_with_mlp_hooks(CONFIG, params, batch)
    x = captured[layer][0, 0]
    h = float((jax.nn.gelu(x @ mlp["wi_0"], approximate=True) * (x @ mlp["wi_1"]))[unit])
    assert abs(h * dl_dh) > 1e-6
    # A float32 central difference with eps 1e-2 is accurate to about 1e-2 relative.
    np.testing.assert_allclose(total[unit], abs(h * dl_dh), rtol=1e-2)


def test_importance_scores_per_group(params):
    scores = importance.importance_scores(CONFIG, params, [[_batch(0)], [_batch(1), _batch(2)]])
    assert sorted(scores) == ["decoder/layers_0", "decoder/layers_1", "encoder/layers_0",
                              "encoder/layers_1"]  # fmt: skip
    for v in scores.values():
        assert v.shape == (2, CONFIG.d_ff) and np.all(v >= 0) and not np.allclose(v[0], v[1])


def test_hidden_router_vectors_are_normalised_mean_mlp_inputs(params):
    positive = [[[5, 6, 7, 1]], [[40, 41, 1], [42, 43, 44, 45, 1]]]
    negative = [[[9, 9, 1]], []]
    vectors = hidden_router.router_vectors(CONFIG, params, positive, negative)

    # Independent route: the MLP input is the pre_mlp_layer_norm output, captured by Flax.
    def mean_norm_output(prompts):
        out = []
        for p in prompts:
            t = jnp.asarray([p], jnp.int32)
            dec = jnp.concatenate([jnp.zeros((1, 1), jnp.int32), t[:, :-1]], axis=1)
            _, state = EncoderDecoder(CONFIG).apply(
                {"params": params}, t, dec, t, enable_dropout=False,
                capture_intermediates=lambda m, _: m.name == "pre_mlp_layer_norm",
                mutable=["intermediates"],
            )  # fmt: skip
            x = state["intermediates"]["encoder"]["layers_1"]["pre_mlp_layer_norm"]["__call__"][0]
            out.append(np.asarray(x[0]).mean(axis=0))
        return np.mean(out, axis=0)

    want0 = mean_norm_output(positive[0]) - mean_norm_output(negative[0])
    want1 = mean_norm_output(positive[1])
    got = vectors["encoder/layers_1"]
    np.testing.assert_allclose(got[0], want0 / np.linalg.norm(want0), atol=1e-5)
    np.testing.assert_allclose(got[1], want1 / np.linalg.norm(want1), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
