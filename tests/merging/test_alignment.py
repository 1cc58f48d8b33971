"""A jointly permuted MoE (router columns + expert weights) computes the same function,
and weight matching recovers a permutation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.merging import alignment, soups
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params


@pytest.fixture(scope="module")
def moe():
    cfg = get_config("gs_tiny", dtype="float32")
    model = EncoderDecoder(cfg)
    return model, random_params(model, 3)


def logits(model, params):
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(3, 259, (2, 8)), jnp.int32)
    dec = jnp.asarray(rng.integers(3, 259, (2, 5)), jnp.int32)
    out, _ = model.apply({"params": params}, enc, dec, dec, mutable=["moe_losses", "moe_metrics"])
    return np.asarray(out)


def random_perms(params, seed):
    rng = np.random.default_rng(seed)
    return {
        path: rng.permutation(alignment._node(params, path)["router"]["kernel"].shape[-1])
        for path in alignment.moe_layers(params)
    }


def test_jointly_permuted_moe_gives_same_outputs(moe):
    model, params = moe
    perms = random_perms(params, 1)
    assert perms and all((p != np.arange(len(p))).any() for p in perms.values())
    permuted = alignment.permute_experts(params, perms)
    layer = next(iter(perms))
    assert not np.allclose(
        alignment._node(permuted, layer)["experts"]["wo"],
        alignment._node(params, layer)["experts"]["wo"],
    )
    np.testing.assert_allclose(logits(model, permuted), logits(model, params), rtol=1e-4, atol=1e-4)


def test_weight_matching_recovers_the_permutation_and_average_is_the_model(moe):
    _, params = moe
    permuted = alignment.permute_experts(params, random_perms(params, 2))
    aligned, _ = alignment.align_experts(params, permuted)
    for path in alignment.moe_layers(params):
        for k, v in alignment._node(params, path)["experts"].items():
            np.testing.assert_array_equal(alignment._node(aligned, path)["experts"][k], v)
    soup = soups.uniform([params, aligned])
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), soup, params
    )


def test_not_a_permutation_is_an_error(moe):
    _, params = moe
    path = alignment.moe_layers(params)[0]
    with pytest.raises(ValueError, match="not a permutation"):
        alignment.permute_experts(params, {path: np.zeros(8, int)})
