"""Output logits are float32 (t5x), and cuDNN attention refuses dropout it cannot apply."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params


def _tokens(seed, shape=(2, 6)):
    return jnp.asarray(np.random.default_rng(seed).integers(2, 500, size=shape), jnp.int32)


@pytest.mark.parametrize("size", ["gs_tiny", "switch_tiny_8"])  # untied head, tied embedding
def test_bfloat16_model_computes_float32_logits(size):
    cfg = get_config(size, dtype="bfloat16")
    model = EncoderDecoder(cfg)
    params = random_params(model, seed=0)
    enc, dec = _tokens(1), _tokens(2)
    logits, state = model.apply(
        {"params": params}, enc, dec, dec, capture_intermediates=True, mutable=["intermediates"]
    )
    assert logits.dtype == jnp.float32
    flat = traverse_util.flatten_dict(state["intermediates"], sep="/")
    (hidden,) = [v[0] for k, v in flat.items() if k.endswith("decoder_norm/__call__")]
    assert hidden.dtype == jnp.bfloat16  # the body runs in bfloat16
    h = np.asarray(hidden, np.float64)
    if cfg.tie_embeddings:
        want = (h * cfg.d_model**-0.5) @ np.asarray(params["token_embedder"]["embedding"]).T
    else:
        want = h @ np.asarray(params["decoder"]["logits_dense"], np.float64)
    # A bfloat16 projection would be off by ~1e-2 relative.
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-5, atol=1e-5)


def test_cudnn_attention_with_dropout_is_an_error():
    cfg = get_config("gs_tiny", dropout_rate=0.1)
    params = random_params(EncoderDecoder(cfg), seed=0)  # same shapes; cuDNN needs a GPU
    model = EncoderDecoder(cfg.replace(attention_implementation="cudnn"))
    enc = _tokens(1)
    with pytest.raises(ValueError, match="cannot apply attention dropout"):
        model.apply(
            {"params": params}, enc, enc, enc, enable_dropout=True,
            rngs={"dropout": jax.random.PRNGKey(0)}, mutable=["moe_losses", "moe_metrics"],
        )  # fmt: skip


def test_init_scale_scales_every_initialiser_but_embedding_and_router():
    # flaxformer's SCALE multiplies the variance of the attention, MLP, expert,
    # relative-position and output initialisers; same key -> values scale by sqrt(SCALE).
    cfg = get_config("gs_tiny", dtype="float32")
    tokens = jnp.ones((1, 4), jnp.int32)

    def init(c):
        variables = jax.jit(EncoderDecoder(c).init)(jax.random.PRNGKey(0), tokens, tokens, tokens)
        return traverse_util.flatten_dict(nn.unbox(variables["params"]), sep="/")

    base, small = init(cfg), init(cfg.replace(init_scale=0.1))
    unscaled = ("token_embedder/embedding", "router/kernel")
    for name, value in base.items():
        if name.endswith("scale"):  # layer norms start at 1
            continue
        factor = 1.0 if name.endswith(unscaled) else np.sqrt(0.1)
        np.testing.assert_allclose(small[name], np.asarray(value) * factor, rtol=1e-5, err_msg=name)
    assert get_config("switch_base_8").init_scale == 0.1 and get_config("base").init_scale == 1.0
