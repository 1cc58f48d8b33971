"""Proxy-tuning identities (lineage.md section 5) on the tiny model, float32."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe import decoding
from flan_moe.evaluation.scoring import make_option_scorer
from flan_moe.merging import proxy as proxy_lib
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from tests.random_params import random_params

EOS = 1
TOL = 1e-5


@pytest.fixture(scope="module")
def setup():
    model = EncoderDecoder(get_config("tiny", dtype="float32"))
    params = [random_params(model, s) for s in (0, 1, 2)]
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(3, 259, (2, 7)), jnp.int32)
    return model, params, enc


@functools.cache
def proxy_fn(model, alpha, config):
    p = proxy_lib.ProxyModels((model, model, model), alpha)
    return jax.jit(
        lambda ps, enc, rng: proxy_lib.proxy_generate(
            p, ps, enc, config=config, eos_id=EOS, rng=rng
        )
    )


CONFIGS = [
    decoding.DecodeConfig(strategy="greedy", max_decode_len=6),
    decoding.DecodeConfig(strategy="beam", beam_size=2, max_decode_len=6, alpha=0.6),
    decoding.DecodeConfig(strategy="sample", temperature=1.0, top_k=0, max_decode_len=6),
]


def reference(model, params, enc, config):
    fn = decoding.make_generate_fn(model, config=config, eos_id=EOS)
    return fn(params, enc, jax.random.PRNGKey(5))


def run(model, alpha, config, params, enc):
    return proxy_fn(model, alpha, config)(tuple(params), enc, jax.random.PRNGKey(5))


@pytest.mark.parametrize(
    "config",
    [CONFIGS[0], *(pytest.param(c, marks=pytest.mark.slow) for c in CONFIGS[1:])],
    ids=lambda c: c.strategy,
)
def test_expert_equal_antiexpert_is_base_decoding(setup, config):
    model, (b, e, _), enc = setup
    tokens, scores = run(model, 1.0, config, (b, e, e), enc)
    ref_tokens, ref_scores = reference(model, b, enc, config)
    np.testing.assert_array_equal(tokens, ref_tokens)
    np.testing.assert_allclose(scores, ref_scores, rtol=TOL, atol=TOL)


def test_alpha_zero_is_base_and_base_equal_anti_alpha_one_is_expert(setup):
    model, (b, e, a), enc = setup
    config = CONFIGS[0]
    tokens, scores = run(model, 0.0, config, (b, e, a), enc)
    ref = reference(model, b, enc, config)
    np.testing.assert_array_equal(tokens, ref[0])
    np.testing.assert_allclose(scores, ref[1], rtol=TOL, atol=TOL)
    tokens, scores = run(model, 1.0, config, (b, e, b), enc)
    ref = reference(model, e, enc, config)
    np.testing.assert_array_equal(tokens, ref[0])
    np.testing.assert_allclose(scores, ref[1], rtol=1e-4, atol=1e-4)  # composite: b + e - b


def test_rank_classification_identities(setup):
    model, (b, e, a), enc = setup
    options = jnp.asarray(np.random.default_rng(1).integers(3, 259, (2, 3, 4)), jnp.int32)
    options = options.at[:, :, -1].set(EOS).at[0, 1, 2:].set(0)
    score = jax.jit(
        lambda ps, alpha: proxy_lib.proxy_option_log_likelihoods(
            proxy_lib.ProxyModels((model,) * 3, alpha), ps, enc, options
        ),
        static_argnums=1,
    )
    np.testing.assert_allclose(
        score((b, e, a), 0.0), make_option_scorer(model)(b, enc, options), rtol=TOL, atol=TOL
    )
    np.testing.assert_allclose(
        score((b, e, b), 1.0), make_option_scorer(model)(e, enc, options), rtol=1e-4, atol=1e-4
    )


def test_logits_and_log_probs_give_the_same_distribution():
    rng = np.random.default_rng(2)
    logits = [jnp.asarray(rng.normal(size=(3, 11)) * 3, jnp.float32) for _ in range(3)]
    from_logits = proxy_lib.combine(logits, 0.7, 11)
    from_log_probs = proxy_lib.combine([jax.nn.log_softmax(x) for x in logits], 0.7, 11)
    np.testing.assert_allclose(from_logits, from_log_probs, rtol=TOL, atol=TOL)
    np.testing.assert_array_equal(jnp.argmax(from_logits, -1), jnp.argmax(from_log_probs, -1))


def test_common_width_and_vocabulary_mismatch():
    small = EncoderDecoder(get_config("tiny", dtype="float32"))
    wide = EncoderDecoder(dataclasses.replace(get_config("tiny", dtype="float32"), vocab_size=520))
    assert proxy_lib.ProxyModels((small, wide, wide)).width == 512
    logits = [jnp.zeros((1, 512)), jnp.ones((1, 520)), jnp.zeros((1, 520))]
    assert proxy_lib.combine(logits, 1.0, 512).shape == (1, 512)
    proxy_lib.check_vocabularies(["byte", "byte", "byte"])
    with pytest.raises(ValueError, match="one vocabulary"):
        proxy_lib.check_vocabularies(["byte", "/x/spiece.model", "byte"])
