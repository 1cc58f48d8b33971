"""Parameter counts and FLOPs against hand counts and against the real parameter tree."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.model.config import SIZES, dense_counterpart, get_config
from flan_moe.model.flops import model_cost
from flan_moe.model.transformer import EncoderDecoder


def tree_param_count(config):
    """Parameters of the real Flax tree (shapes only: eval_shape allocates nothing)."""
    x = jnp.ones((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: EncoderDecoder(config).init(jax.random.PRNGKey(0), x, x, x))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


def test_switch_base_8_hand_count():
    # T5 1.0 base shapes: v = 32128, d = 768, 12 heads x 64 = 768, f = 3072, ReLU (wi, wo),
    # head tied to the embedding; layers 1, 3, 5, 7, 9, 11 of each stack sparse, 8 experts.
    embedding = 32128 * 768  # 24,674,304
    attention = 4 * 768 * 768  # 2,359,296
    mlp = 2 * 768 * 3072  # 4,718,592
    sparse = 8 * mlp + 768 * 8  # 37,754,880 (experts + router)
    relpos = 32 * 12
    encoder = 12 * attention + 12 * 2 * 768 + 6 * mlp + 6 * sparse + relpos + 768
    decoder = 24 * attention + 12 * 3 * 768 + 6 * mlp + 6 * sparse + relpos + 768
    total = embedding + encoder + decoder
    assert total == 619_339_008  # Hugging Face lists google/switch-base-8 at ~619M
    # Active: each sparse layer uses 1 of its 8 experts.
    active = total - 12 * 7 * mlp
    assert active == 222_977_280
    cost = model_cost(get_config("switch_base_8"))
    assert cost.total_params == total
    assert cost.active_params == active
    assert tree_param_count(get_config("switch_base_8")) == total


def test_st_moe_32b_hand_count():
    # v = 32128, d = 5120, 64 heads x 128 = 8192, f = 20480, gated GELU (wi_0, wi_1, wo),
    # untied head; 24 + 24 layers, layers 3, 7, 11, 15, 19, 23 sparse: 64 experts, top-2,
    # and an extra dense MLP beside each sparse one (flaxformer st_moe_32b.gin).
    embedding = 32128 * 5120  # 164,495,360 (and the same again for the LM head)
    attention = 4 * 5120 * 8192  # 167,772,160
    mlp = 3 * 5120 * 20480  # 314,572,800
    sparse = 64 * mlp + 5120 * 64 + mlp  # experts, router, the extra dense MLP
    relpos = 32 * 64
    encoder = 24 * attention + 24 * 2 * 5120 + 18 * mlp + 6 * sparse + relpos + 5120
    decoder = 48 * attention + 24 * 3 * 5120 + 18 * mlp + 6 * sparse + relpos + 5120
    total = 2 * embedding + encoder + decoder
    assert total == 269_104_551_936  # ST-MoE-32B's "269B" (Zoph et al. 2022)
    active = total - 12 * 62 * mlp  # top-2 of 64 experts in 12 sparse layers
    assert active == 35_062_388_736
    cost = model_cost(get_config("st_moe_32b"))
    assert (cost.total_params, cost.active_params) == (total, active)
    assert tree_param_count(get_config("st_moe_32b")) == total


@pytest.mark.parametrize(
    "name,moe_changes",
    [
        ("switch_tiny_8", {}),
        ("ec_tiny", {}),
        ("st_moe_tiny", dict(extra_dense_mlp=True, router_bias=True)),
        ("gs_tiny", dict(expert_granularity=2, num_shared_experts=2)),  # DeepSeekMoE style
        ("gs_tiny", dict(expert_mlp_dim=24, encoder_sparse_layers=(0, 1))),
    ],
)
def test_analytic_count_equals_parameter_tree(name, moe_changes):
    config = get_config(name)
    config = config.replace(moe=config.moe.replace(**moe_changes))
    assert model_cost(config).total_params == tree_param_count(config)
    dense = dense_counterpart(config)
    assert model_cost(dense).total_params == tree_param_count(dense)


def test_flops_per_token_hand_count_tiny():
    # switch_tiny_8: d = 32, 4 heads x 8 = 32, f = 64 ReLU, v = 512 (tied), 2 + 2 layers,
    # layer 1 of each stack sparse (8 experts, top-1); input 16 tokens, target 8.
    d, hx, f, v, e = 32, 32, 64, 512, 8
    mlp = 2 * d * f
    attention = 4 * d * hx
    enc_matmul = 2 * attention + mlp + (mlp + d * e)  # dense layer 0, sparse layer 1
    dec_matmul = 4 * attention + mlp + (mlp + d * e) + d * v  # + LM head
    enc = 2 * enc_matmul + 2 * 4 * hx * 16  # + q.k and p.v over 16 keys, 2 layers
    dec = 2 * dec_matmul + 2 * 4 * hx * (8 + 16)  # self (8 keys) + cross (16 keys)
    cost = model_cost(get_config("switch_tiny_8"), input_length=16, target_length=8)
    assert cost.encoder_flops_per_token == enc
    assert cost.decoder_flops_per_token == dec
    assert cost.flops_per_example == 16 * enc + 8 * dec
    assert cost.train_flops_per_example == 3 * cost.flops_per_example


def test_dense_counterparts_have_the_active_compute():
    # Switch (top-1, experts of width d_ff): the counterpart is the dense T5 1.0 model;
    # it does the same matmuls except the router (2 * d * e FLOPs per sparse layer token).
    switch = get_config("switch_base_8")
    dense = dense_counterpart(switch)
    assert (
        dense.moe is None and dense.replace(name="switch_base_dense") == SIZES["switch_base_dense"]
    )
    router_flops = 2 * 768 * 8 * 6
    moe_cost, dense_cost = model_cost(switch), model_cost(dense)
    assert moe_cost.encoder_flops_per_token - dense_cost.encoder_flops_per_token == router_flops
    # Top-2: one always-on expert of twice the width; FLOPs differ by the routers only.
    gs = get_config("gs_base")
    dense_gs = dense_counterpart(gs)
    assert dense_gs.moe.num_experts == 1 and dense_gs.moe.expert_d_ff(gs.d_ff) == 2 * 2048
    diff = model_cost(gs).decoder_flops_per_token - model_cost(dense_gs).decoder_flops_per_token
    assert diff == 2 * 768 * (32 - 1) * 6
