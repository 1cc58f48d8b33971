"""jax.nn.dot_product_attention with T5's bias equals the einsum attention (float32)."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from flan_moe.model.config import get_config
from flan_moe.model.layers import MultiHeadAttention, attention_mask

CONFIG = get_config("tiny", dtype="float32")


def test_dot_product_attention_equals_einsum_attention():
    rng = np.random.default_rng(0)
    q_in = rng.normal(size=(2, 7, CONFIG.d_model)).astype(np.float32)
    kv_in = rng.normal(size=(2, 9, CONFIG.d_model)).astype(np.float32)
    q_valid = np.ones((2, 7), bool)
    kv_valid = np.arange(9)[None] < np.array([[9], [5]])  # second row padded
    mask = attention_mask(q_valid, kv_valid)
    bias = rng.normal(size=(1, CONFIG.num_heads, 7, 9)).astype(np.float32)
    einsum = MultiHeadAttention(CONFIG)
    params = nn.unbox(
        einsum.init(jax.random.PRNGKey(0), q_in, kv_in, mask=mask, bias=bias, enable_dropout=False)
    )
    expected = einsum.apply(params, q_in, kv_in, mask=mask, bias=bias, enable_dropout=False)
    fused = MultiHeadAttention(CONFIG.replace(attention_implementation="dot_product"))
    out = fused.apply(params, q_in, kv_in, mask=mask, bias=bias, enable_dropout=False)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_fused_attention_refuses_dropout():
    config = CONFIG.replace(attention_implementation="dot_product", dropout_rate=0.1)
    x = np.ones((1, 3, config.d_model), np.float32)
    with pytest.raises(ValueError, match="cannot apply attention dropout"):
        MultiHeadAttention(config).init(
            {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)},
            x, x, mask=None, bias=None, enable_dropout=True,
        )  # fmt: skip
    with pytest.raises(ValueError, match="attention_implementation must be"):
        CONFIG.replace(attention_implementation="flash")
