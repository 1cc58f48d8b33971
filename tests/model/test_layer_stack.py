"""Scanned layers and remat policies: same numbers as the unrolled model, tree conversion."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flan_moe import partitioning
from flan_moe.model import layer_stack
from flan_moe.model.config import get_config
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.models import LossConfig, loss_fn
from tests.model.test_transformer import decode_one_token_at_a_time
from tests.random_params import random_params

# 4 + 4 layers so a stack has two scanned blocks of (dense, sparse) layers.
UNROLLED = get_config(
    "switch_tiny_8", dtype="float32", num_encoder_layers=4, num_decoder_layers=4
).replace(moe=get_config("switch_tiny_8").moe.replace(router_z_loss_coef=0.001))
SCANNED = UNROLLED.replace(scan_layers=True)


def _batch(seed: int = 0, batch: int = 2, enc_len: int = 8, dec_len: int = 6) -> dict:
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, UNROLLED.vocab_size, (batch, enc_len)).astype(np.int32)
    tgt = rng.integers(2, UNROLLED.vocab_size, (batch, dec_len)).astype(np.int32)
    tgt[0, -2:] = 0  # some padding
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), tgt[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": enc,
        "decoder_input_tokens": dec_in,
        "decoder_target_tokens": tgt,
    }


@pytest.fixture(scope="module")
def unrolled_params():
    return random_params(EncoderDecoder(UNROLLED), seed=0)


def _loss_and_grads(config, params, batch):
    model = EncoderDecoder(config)

    def f(p):
        return loss_fn(p, batch, model=model, loss_config=LossConfig())

    (loss, parts), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return loss, parts, grads


@pytest.fixture(scope="module")
def unrolled_result(unrolled_params):
    return _loss_and_grads(UNROLLED, unrolled_params, _batch())


def _assert_trees_close(a, b):
    flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
    flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
    assert len(flat_a) == len(flat_b)
    for path, x in flat_a:
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(flat_b[path]), rtol=1e-5, atol=1e-5, err_msg=str(path)
        )


def test_scanned_init_has_the_converted_tree_shape(unrolled_params):
    b = _batch()
    abstract = jax.eval_shape(
        EncoderDecoder(SCANNED).init,
        jax.random.PRNGKey(0),
        b["encoder_input_tokens"],
        b["decoder_input_tokens"],
        b["decoder_target_tokens"],
    )
    scanned = layer_stack.unrolled_to_scanned(unrolled_params, SCANNED)
    expected = jax.tree.map(lambda x: (x.shape, x.dtype), nn.unbox(abstract["params"]))
    assert jax.tree.map(lambda x: (x.shape, x.dtype), scanned) == expected
    wi = scanned["encoder"]["blocks"]["layers_1"]["moe"]["experts"]["wi"]
    assert wi.shape[0] == 2  # two blocks of (dense, sparse)
    # The scanned param carries the "layers" logical axis, replicated on the mesh.
    specs = partitioning.params_partition_specs(abstract)
    assert specs["params"]["encoder"]["blocks"]["layers_0"]["mlp"]["wo"] == P(None, "model", None)


def test_conversion_round_trip_is_exact(unrolled_params):
    scanned = layer_stack.unrolled_to_scanned(unrolled_params, SCANNED)
    back = layer_stack.scanned_to_unrolled(scanned, SCANNED)
    assert jax.tree.structure(back) == jax.tree.structure(unrolled_params)
    jax.tree.map(np.testing.assert_array_equal, back, unrolled_params)


def test_scanned_loss_router_losses_and_grads_equal_unrolled(unrolled_params, unrolled_result):
    loss, parts, grads = unrolled_result
    scanned_params = layer_stack.unrolled_to_scanned(unrolled_params, SCANNED)
    s_loss, s_parts, s_grads = _loss_and_grads(SCANNED, scanned_params, _batch())
    np.testing.assert_allclose(s_loss, loss, rtol=1e-5, atol=1e-5)
    assert float(parts["load_balancing_loss"]) > 0 and float(parts["router_z_loss"]) > 0
    _assert_trees_close(s_parts, parts)
    _assert_trees_close(layer_stack.scanned_to_unrolled(s_grads, SCANNED), grads)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["full", "dots"])
def test_remat_policies_give_the_same_loss_and_grads(policy, unrolled_params, unrolled_result):
    loss, parts, grads = unrolled_result
    r_loss, r_parts, r_grads = _loss_and_grads(
        UNROLLED.replace(remat_policy=policy), unrolled_params, _batch()
    )
    np.testing.assert_allclose(r_loss, loss, rtol=1e-5, atol=1e-5)
    _assert_trees_close(r_grads, grads)


@pytest.mark.slow
def test_scanned_kv_cache_decoding_equals_teacher_forcing():
    # Dense: MoE capacity makes one-token steps route differently from a whole sequence.
    config = get_config("tiny", dtype="float32", scan_layers=True, remat_policy="full")
    model = EncoderDecoder(config)
    b = _batch(seed=3)
    enc, dec_in = b["encoder_input_tokens"], b["decoder_input_tokens"]
    params = random_params(EncoderDecoder(config.replace(scan_layers=False)), seed=1)
    params = layer_stack.unrolled_to_scanned(params, config)
    assert params["decoder"]["blocks"]["layers_0"]["mlp"]["wo"].shape[0] == 2
    teacher = np.asarray(model.apply({"params": params}, enc, dec_in))
    stepped = decode_one_token_at_a_time(model, params, enc, dec_in)
    np.testing.assert_allclose(stepped, teacher, rtol=1e-5, atol=1e-5)


def test_scan_errors_name_the_fix():
    moe = UNROLLED.moe
    with pytest.raises(ValueError, match="multiple of sparse_interval=4"):
        layer_stack.block_size(
            SCANNED.replace(moe=moe.replace(sparse_interval=4), num_encoder_layers=6), decoder=False
        )
    with pytest.raises(ValueError, match="periodic sparse placement"):
        layer_stack.block_size(
            SCANNED.replace(moe=moe.replace(decoder_sparse_layers=(1,))), decoder=True
        )
    with pytest.raises(ValueError, match="remat_policy must be"):
        UNROLLED.replace(remat_policy="dots_saveable")
    assert layer_stack.block_size(get_config("tiny"), decoder=False) == 1
