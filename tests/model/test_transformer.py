"""The encoder-decoder: causality, packing, KV-cache decoding, sharding, partition specs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flan_moe import partitioning
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder

CONFIG = get_config("tiny", dtype="float32")
MODEL = EncoderDecoder(CONFIG)


def _batch(rng: np.random.Generator, batch: int, enc_len: int, dec_len: int):
    enc = rng.integers(2, CONFIG.vocab_size, (batch, enc_len)).astype(np.int32)
    tgt = rng.integers(2, CONFIG.vocab_size, (batch, dec_len)).astype(np.int32)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return enc, dec_in, tgt


@pytest.fixture(scope="module")
def params():
    enc, dec_in, tgt = _batch(np.random.default_rng(0), 2, 8, 6)
    variables = MODEL.init(jax.random.PRNGKey(0), enc, dec_in, tgt)
    return nn.unbox(variables["params"])


@pytest.fixture(scope="module")
def forward():
    return jax.jit(lambda p, *a: MODEL.apply({"params": p}, *a))


def test_decoder_is_causal(params, forward):
    enc, dec_in, tgt = _batch(np.random.default_rng(1), 2, 10, 8)
    base = np.asarray(forward(params, enc, dec_in, tgt))
    changed_in = dec_in.copy()
    changed_in[:, 5:] = (changed_in[:, 5:] + 7) % CONFIG.vocab_size + 2
    changed = np.asarray(forward(params, enc, changed_in, tgt))
    np.testing.assert_allclose(changed[:, :5], base[:, :5], rtol=1e-5, atol=1e-5)
    assert np.abs(changed[:, 5:] - base[:, 5:]).max() > 1e-3  # later positions do see it


def test_packed_row_equals_separate_examples(params, forward):
    rng = np.random.default_rng(2)
    enc_a, dec_a, tgt_a = _batch(rng, 1, 5, 4)
    enc_b, dec_b, tgt_b = _batch(rng, 1, 6, 3)
    # Packed: [a | b | pad] with segment ids 1, 2, 0; decoder inputs restart at b.
    enc = np.zeros((1, 13), np.int32)
    enc[0, :5], enc[0, 5:11] = enc_a[0], enc_b[0]
    enc_seg = np.array([[1] * 5 + [2] * 6 + [0] * 2], np.int32)
    tgt = np.zeros((1, 9), np.int32)
    tgt[0, :4], tgt[0, 4:7] = tgt_a[0], tgt_b[0]
    dec_in = np.zeros((1, 9), np.int32)
    dec_in[0, :4], dec_in[0, 4:7] = dec_a[0], dec_b[0]
    dec_seg = np.array([[1] * 4 + [2] * 3 + [0] * 2], np.int32)
    packed = np.asarray(MODEL.apply({"params": params}, enc, dec_in, tgt, enc_seg, dec_seg))
    alone_a = np.asarray(forward(params, enc_a, dec_a, tgt_a))
    alone_b = np.asarray(forward(params, enc_b, dec_b, tgt_b))
    np.testing.assert_allclose(packed[0, :4], alone_a[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(packed[0, 4:7], alone_b[0], rtol=1e-4, atol=1e-4)


def test_padding_does_not_change_real_positions(params, forward):
    enc, dec_in, tgt = _batch(np.random.default_rng(3), 1, 6, 4)
    padded_enc = np.concatenate([enc, np.zeros((1, 3), np.int32)], axis=1)
    padded_tgt = np.concatenate([tgt, np.zeros((1, 2), np.int32)], axis=1)
    padded_in = np.concatenate([dec_in, tgt[:, -1:], np.zeros((1, 1), np.int32)], axis=1)
    base = np.asarray(forward(params, enc, dec_in, tgt))
    padded = np.asarray(MODEL.apply({"params": params}, padded_enc, padded_in, padded_tgt))
    np.testing.assert_allclose(padded[:, :4], base, rtol=1e-4, atol=1e-4)


def test_kv_cache_decoding_equals_teacher_forcing(params, forward):
    enc, dec_in, tgt = _batch(np.random.default_rng(4), 3, 9, 7)
    teacher = np.asarray(forward(params, enc, dec_in, tgt))
    stepped = decode_one_token_at_a_time(MODEL, params, enc, dec_in)
    np.testing.assert_allclose(stepped, teacher, rtol=1e-5, atol=1e-5)


def decode_one_token_at_a_time(model, params, enc, dec_in):
    """Logits [b, l, v] of ``dec_in`` fed one token per step through the KV cache."""
    encoded = model.apply({"params": params}, enc, method=model.encode)
    _, state = model.apply(
        {"params": params}, encoded, enc, np.zeros_like(dec_in), decode=True,
        mutable=["cache"], method=model.decode,
    )  # fmt: skip

    @jax.jit
    def step(cache, token):
        logits, state = model.apply(
            {"params": params, "cache": cache}, encoded, enc, token, decode=True,
            mutable=["cache"], method=model.decode,
        )  # fmt: skip
        return logits, state["cache"]

    cache, outs = state["cache"], []
    for t in range(dec_in.shape[1]):
        logits, cache = step(cache, dec_in[:, t : t + 1])
        outs.append(np.asarray(logits))
    return np.concatenate(outs, axis=1)


def _loss(logits, targets):
    weights = (targets > 0).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    return jnp.sum(ce * weights) / jnp.sum(weights)


def test_sharded_loss_equals_single_device(params):
    enc, dec_in, tgt = _batch(np.random.default_rng(5), 8, 8, 6)
    tgt[:, -2:] = 0  # some padding
    single = float(_loss(MODEL.apply({"params": params}, enc, dec_in, tgt), tgt))

    mesh = partitioning.make_mesh(data=2, expert=2, model=2)
    abstract = jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), enc, dec_in, tgt)
    with partitioning.axis_rules(mesh):
        shardings = nn.unbox(partitioning.params_shardings(abstract, mesh))["params"]
        sharded_params = jax.device_put(params, shardings)
        batch = partitioning.shard_batch({"e": enc, "d": dec_in, "t": tgt}, mesh)
        loss_fn = jax.jit(
            lambda p, b: _loss(MODEL.apply({"params": p}, b["e"], b["d"], b["t"]), b["t"])
        )
        sharded = float(loss_fn(sharded_params, batch))
    kernel = sharded_params["decoder"]["layers_0"]["mlp"]["wi_0"]
    assert kernel.sharding.spec == P(None, "model")
    assert len(kernel.addressable_shards) == 8
    np.testing.assert_allclose(sharded, single, rtol=1e-5)


def test_partition_specs_of_named_params():
    enc, dec_in, tgt = _batch(np.random.default_rng(0), 2, 8, 6)
    abstract = jax.eval_shape(MODEL.init, jax.random.PRNGKey(0), enc, dec_in, tgt)
    specs = partitioning.params_partition_specs(abstract)["params"]
    assert specs["token_embedder"]["embedding"] == P("model", None)
    assert specs["encoder"]["layers_0"]["attention"]["query"] == P(None, "model", None)
    assert specs["encoder"]["layers_0"]["attention"]["out"] == P("model", None, None)
    assert specs["encoder"]["layers_1"]["mlp"]["wo"] == P("model", None)
    assert specs["encoder"]["relpos_bias"]["rel_embedding"] == P(None, "model")
    assert specs["decoder"]["logits_dense"] == P(None, "model")
    assert specs["decoder"]["decoder_norm"]["scale"] == P(None)


def test_mesh_errors_name_the_counts():
    with pytest.raises(ValueError, match="does not divide"):
        partitioning.make_mesh(data=-1, expert=3)
    with pytest.raises(ValueError, match="needs 4 devices"):
        partitioning.make_mesh(data=2, expert=2, model=1)
    mesh = partitioning.make_mesh(data=-1, expert=2, model=2)
    assert dict(mesh.shape) == {"data": 2, "expert": 2, "model": 2}
    one = partitioning.make_mesh(devices=jax.devices()[:1])
    assert dict(one.shape) == {"data": 1, "expert": 1, "model": 1}
