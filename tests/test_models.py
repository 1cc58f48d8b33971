"""The training loss: cross-entropy, label smoothing, z-loss, normalisation by real tokens."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.models import LossConfig, cross_entropy_with_z_loss, loss_fn


def _naive_ce(logits, targets, smoothing):
    """Per-token loss by explicit loops over a numpy soft-target distribution (float64)."""
    b, length, v = logits.shape
    ce = np.zeros((b, length))
    zsq = np.zeros((b, length))
    for i in range(b):
        for t in range(length):
            row = logits[i, t].astype(np.float64)
            log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
            log_p = row - log_z
            soft = np.full(v, smoothing / (v - 1))
            soft[targets[i, t]] = 1.0 - smoothing
            entropy = -np.sum(soft * np.log(soft)) if smoothing else 0.0
            ce[i, t] = -np.sum(soft * log_p) - entropy
            zsq[i, t] = log_z**2
    return ce, zsq


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_matches_naive_loop(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 7)).astype(np.float32) * 3
    targets = rng.integers(0, 7, size=(2, 3))
    ce, zsq = cross_entropy_with_z_loss(
        jnp.asarray(logits), jnp.asarray(targets), label_smoothing=smoothing
    )
    ref_ce, ref_z = _naive_ce(logits, targets, smoothing)
    np.testing.assert_allclose(np.asarray(ce), ref_ce, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(zsq), ref_z, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny():
    config = get_config("tiny", dtype="float32")
    model = EncoderDecoder(config)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(1), tokens, tokens, tokens)["params"])
    return model, params


_loss = jax.jit(
    loss_fn, static_argnames=("model", "loss_config", "num_microbatches", "enable_dropout")
)


def _example(rng, in_len, tgt_len):
    inputs = rng.integers(3, 200, size=in_len).astype(np.int32)
    targets = rng.integers(3, 200, size=tgt_len).astype(np.int32)
    return inputs, targets


def _row(inputs, targets, in_width, tgt_width):
    enc = np.zeros(in_width, np.int32)
    enc[: len(inputs)] = inputs
    tgt = np.zeros(tgt_width, np.int32)
    tgt[: len(targets)] = targets
    dec = np.concatenate([[0], tgt[:-1]]).astype(np.int32)
    dec[len(targets) :] = 0
    return enc, dec, tgt


def test_loss_is_normalised_by_real_target_tokens_with_padding(tiny):
    model, params = tiny
    rng = np.random.default_rng(2)
    rows = [_row(*_example(rng, n, m), 8, 6) for n, m in ((5, 6), (3, 2))]
    batch = {
        "encoder_input_tokens": np.stack([r[0] for r in rows]),
        "decoder_input_tokens": np.stack([r[1] for r in rows]),
        "decoder_target_tokens": np.stack([r[2] for r in rows]),
    }
    config = LossConfig(z_loss=1e-4)
    loss, parts = _loss(params, batch, model=model, loss_config=config)
    logits = np.asarray(jax.jit(model.apply)({"params": params}, **batch))
    ce, zsq = _naive_ce(logits, batch["decoder_target_tokens"], 0.0)
    weights = batch["decoder_target_tokens"] > 0
    assert weights.sum() == 8  # 6 + 2 real target tokens; 4 padding
    expected = (np.sum(ce * weights) + 1e-4 * np.sum(zsq * weights)) / 8
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    assert float(parts["weight_sum"]) == 8.0


def test_packed_loss_equals_token_mean_of_unpacked_examples(tiny):
    """Two examples packed in one row give the loss of both, each token weighted once."""
    model, params = tiny
    rng = np.random.default_rng(3)
    (x1, y1), (x2, y2) = _example(rng, 4, 3), _example(rng, 3, 2)
    config = LossConfig(z_loss=1e-4)
    # Unpacked: each example alone; loss sums weighted by token counts.
    sums = []
    for x, y in ((x1, y1), (x2, y2)):
        enc, dec, tgt = _row(x, y, 8, 6)
        single = {
            "encoder_input_tokens": enc[None],
            "decoder_input_tokens": dec[None],
            "decoder_target_tokens": tgt[None],
        }
        loss, _ = _loss(params, single, model=model, loss_config=config)
        sums.append(float(loss) * len(y))
    expected = sum(sums) / (len(y1) + len(y2))
    # Packed into one row with segment ids (+ one padding position each side).
    enc = np.concatenate([x1, x2, [0]]).astype(np.int32)
    enc_seg = np.array([1] * 4 + [2] * 3 + [0], np.int32)
    tgt = np.concatenate([y1, y2, [0]]).astype(np.int32)
    dec = np.concatenate([[0], y1[:-1], [0], y2[:-1], [0]]).astype(np.int32)
    dec_seg = np.array([1] * 3 + [2] * 2 + [0], np.int32)
    packed = {
        "encoder_input_tokens": enc[None],
        "decoder_input_tokens": dec[None],
        "decoder_target_tokens": tgt[None],
        "encoder_segment_ids": enc_seg[None],
        "decoder_segment_ids": dec_seg[None],
        "encoder_positions": np.array([[0, 1, 2, 3, 0, 1, 2, 0]], np.int32),
        "decoder_positions": np.array([[0, 1, 2, 0, 1, 0]], np.int32),
        "decoder_loss_weights": (dec_seg > 0).astype(np.float32)[None],
    }
    loss, parts = _loss(params, packed, model=model, loss_config=config)
    assert float(parts["weight_sum"]) == 5.0
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)


def test_microbatch_normaliser_makes_losses_add_up(tiny):
    model, params = tiny
    rng = np.random.default_rng(4)
    rows = [_row(*_example(rng, 5, m), 8, 6) for m in (6, 2, 4, 1)]
    batch = {
        k: np.stack([r[i] for r in rows])
        for i, k in enumerate(
            ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
        )
    }
    config = LossConfig()
    full, _ = _loss(params, batch, model=model, loss_config=config)
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 2), slice(2, 4))]
    total = sum(
        float(
            _loss(
                params, h, model=model, loss_config=config, loss_normalizer=13.0, num_microbatches=2
            )[0]
        )
        for h in halves
    )
    np.testing.assert_allclose(total, float(full), rtol=1e-5)


def test_router_losses_with_explicitly_listed_sparse_layers():
    """An unrolled MoE whose sparse layers are listed (as upcycled models are) trains.

    The scanned-to-unrolled renaming of sown router values is for scanned models only;
    applied to an unrolled model with a listed placement it used to raise.
    """
    base = get_config("switch_tiny_8", dtype="float32")
    config = base.replace(
        scan_layers=False,
        moe=base.moe.replace(encoder_sparse_layers=(1,), decoder_sparse_layers=(1,)),
    )
    model = EncoderDecoder(config)
    tokens = jnp.full((2, 8), 5, jnp.int32)
    params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), tokens, tokens, tokens)["params"])
    batch = {
        "encoder_input_tokens": tokens,
        "decoder_input_tokens": tokens,
        "decoder_target_tokens": tokens,
    }
    loss, parts = _loss(params, batch, model=model, loss_config=LossConfig())
    assert np.isfinite(float(loss))
    # Two sparse layers (one per stack), each with a load-balancing loss >= 1 (flaxformer's).
    assert float(parts["load_balancing_loss"]) >= 1.0 - 1e-6
