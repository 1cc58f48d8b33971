"""Relative-position buckets and RMSNorm against hand-worked values."""

import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.model.layers import relative_position_bucket

# (key - query, expected bucket), worked by hand from T5's formula with 32 buckets and
# max distance 128. Bidirectional: 16 buckets per direction, 8 exact; keys after the
# query get +16; beyond that 8 + floor(log(n / 8) / log(16) * 8), capped at 15.
BIDIRECTIONAL = [
    (0, 0), (-1, 1), (1, 17), (-7, 7), (7, 23),
    (-8, 8),     # log(1) = 0
    (-11, 8),    # log(11/8)/log(16)*8 = 0.92 -> 0
    (-12, 9),    # log(1.5)/log(16)*8 = 1.17 -> 1
    (-16, 10),   # log(2)/log(16)*8 = 2
    (-32, 12),   # 4
    (-64, 14),   # 6
    (-128, 15),  # 8 -> capped at 15
    (-1000, 15),
    (16, 26), (200, 31),
]  # fmt: skip
# Causal: 32 buckets one way, 16 exact; later keys (masked anyway) -> 0;
# beyond 16: 16 + floor(log(n / 16) / log(8) * 16), capped at 31.
CAUSAL = [
    (0, 0), (5, 0), (-1, 1), (-15, 15),
    (-16, 16),   # log(1) = 0
    (-32, 21),   # log(2)/log(8)*16 = 5.33
    (-64, 26),   # 10.67
    (-100, 30),  # log(6.25)/log(8)*16 = 14.1
    (-127, 31),  # 15.94
    (-128, 31),  # 16 -> capped at 31
    (-5000, 31),
]  # fmt: skip


@pytest.mark.parametrize("bidirectional, table", [(True, BIDIRECTIONAL), (False, CAUSAL)])
def test_relative_position_bucket_hand_table(bidirectional, table):
    relative = jnp.array([r for r, _ in table], dtype=jnp.int32)
    got = relative_position_bucket(relative, bidirectional=bidirectional)
    np.testing.assert_array_equal(np.asarray(got), [b for _, b in table])


def test_relative_position_bucket_matches_hugging_face():
    torch = pytest.importorskip("torch")
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = np.arange(-300, 301)
    for bidirectional in (True, False):
        ref = T5Attention._relative_position_bucket(
            torch.tensor(relative), bidirectional=bidirectional, num_buckets=32, max_distance=128
        ).numpy()
        got = relative_position_bucket(jnp.asarray(relative), bidirectional=bidirectional)
        np.testing.assert_array_equal(np.asarray(got), ref)


def test_rms_norm_against_numpy():
    import jax

    from flan_moe.model.layers import RMSNorm

    x = np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32)
    norm = RMSNorm(epsilon=1e-6, dtype="float32")
    variables = norm.init(jax.random.PRNGKey(0), x)
    scale = np.linspace(0.5, 2.0, 8).astype(np.float32)
    y = norm.apply({"params": {"scale": scale}}, x)
    expected = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + 1e-6) * scale
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-5, atol=1e-5)
    assert variables["params"]["scale"].value.shape == (8,)
