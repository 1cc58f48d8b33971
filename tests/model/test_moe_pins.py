"""Regression pins for the MoE layer: param paths and shapes, and fixed-input outputs.

These are REGRESSION pins, not correctness checks: the expected values were computed
once by this repository's own code (commit f8411e6, before ``MoeBlock.__call__`` was
split into named pieces) and committed as constants, so a refactoring that changes
the param tree, the RNG stream of a param, or a number by more than float32 noise
fails here. Correctness lives elsewhere (``test_moe.py``: a naive per-token loop;
``test_hf_switch.py``, ``test_flaxformer_conventions.py``: reference numbers).

Regenerate only for a deliberate change of behaviour:
``.venv/bin/python tests/model/test_moe_pins.py`` prints the constants.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flan_moe.model.config import MoeConfig, get_config
from flan_moe.model.moe import MoeBlock, collect_moe_metrics, collect_router_losses
from flan_moe.model.transformer import EncoderDecoder

MODELS = ("switch_tiny_8", "gs_tiny", "ec_tiny", "st_moe_tiny")

# Each case: (MoeConfig overrides, mlp_activation, decoder, enable_dropout).
_BASE = dict(num_experts=4, max_group_size=12, min_expert_capacity=1)
CASES = {
    "einsum_top2_bpr_padding": (
        dict(num_selected_experts=2, batch_prioritized_routing=True,
             router_ignore_padding_tokens=True, capacity_factor_eval=1.0),
        "gated-gelu", False, False,
    ),
    "gather_top2": (
        dict(num_selected_experts=2, dispatch="gather", capacity_factor_eval=1.0),
        "gated-gelu", False, False,
    ),
    "dropless_top2": (
        dict(num_selected_experts=2, dispatch="gather", dropless=True),
        "gated-gelu", False, False,
    ),
    "experts_choose": (
        dict(encoder_router="experts_choose", capacity_factor_eval=1.0),
        "gated-gelu", False, False,
    ),
    "decoder_top1_shared_extra_bias": (
        dict(num_selected_experts=1, num_shared_experts=1, extra_dense_mlp=True,
             router_bias=True, load_balancing_pooling="stack",
             router_loss_combination="sum_of_stack_means"),
        "relu", True, False,
    ),
    "train_jitter_expert_dropout": (
        dict(num_selected_experts=2, router_jitter_noise=0.1, expert_dropout_rate=0.3,
             capacity_factor_train=1.0),
        "gated-gelu", False, True,
    ),
}  # fmt: skip


def block_for(case: str) -> tuple[MoeBlock, bool]:
    moe, act, decoder, train = CASES[case]
    cfg = get_config("gs_tiny", dtype="float32", mlp_activation=act)
    return MoeBlock(cfg.replace(moe=MoeConfig(**{**_BASE, **moe})), decoder=decoder), train


def fixed_inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(20)
    x = rng.normal(size=(2, 12, 32)).astype(np.float32)
    mask = np.ones((2, 12), bool)
    mask[0, -3:] = False
    return x, mask


def fixed_params(block: MoeBlock, x: np.ndarray, mask: np.ndarray) -> dict:
    """Params drawn by numpy from the sorted param paths (independent of JAX's RNG)."""
    abstract = jax.eval_shape(
        lambda: block.init(jax.random.PRNGKey(0), x, padding_mask=mask, enable_dropout=False)
    )
    rng = np.random.default_rng(7)
    flat = traverse_util.flatten_dict(nn.unbox(abstract["params"]), sep="/")
    params = {}
    for name, leaf in sorted(flat.items()):
        scale = (
            1.0 if name == "router/kernel" else (leaf.shape[-2] ** -0.5 if leaf.ndim > 1 else 0.1)
        )
        params[name] = jnp.asarray(rng.normal(size=leaf.shape) * scale, jnp.float32)
    return traverse_util.unflatten_dict(params, sep="/")


def run_case(case: str) -> dict[str, np.ndarray]:
    block, train = block_for(case)
    x, mask = fixed_inputs()
    params = fixed_params(block, x, mask)
    rngs = {"dropout": jax.random.PRNGKey(3)} if train else None
    apply = jax.jit(
        lambda p, x, m, r: block.apply(
            {"params": p}, x, padding_mask=m, enable_dropout=train, rngs=r,
            mutable=["moe_losses", "moe_metrics"],
        )
    )  # fmt: skip
    y, state = apply(params, x, mask, rngs)
    y = np.asarray(y)
    losses = collect_router_losses(state["moe_losses"])
    metrics = collect_moe_metrics(state["moe_metrics"])
    return {
        "y_corner": y[0, :2, :4],
        "y_sum": y.sum(),
        "y_abs_sum": np.abs(y).sum(),
        "load_balancing_loss": np.asarray(losses["load_balancing_loss"]),
        "router_z_loss": np.asarray(losses["router_z_loss"]),
        "fraction_dropped": np.asarray(metrics["fraction_dropped"]),
    }


def model_param_shapes(name: str) -> dict[str, tuple[int, ...]]:
    model = EncoderDecoder(get_config(name, dtype="float32"))
    tokens = jnp.ones((2, 8), jnp.int32)
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), tokens, tokens, tokens))
    flat = traverse_util.flatten_dict(nn.unbox(abstract["params"]), sep="/")
    return {path: tuple(leaf.shape) for path, leaf in sorted(flat.items())}


# --- The pinned constants (computed once at commit f8411e6) ----------------------------

PINNED_PARAM_SHAPES = {
    "ec_tiny": {
        "decoder/decoder_norm/scale": (32,),
        "decoder/layers_0/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_0/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_0/mlp/wi_0": (32, 64),
        "decoder/layers_0/mlp/wi_1": (32, 64),
        "decoder/layers_0/mlp/wo": (64, 32),
        "decoder/layers_0/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_0/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_0/self_attention/key": (32, 4, 8),
        "decoder/layers_0/self_attention/out": (4, 8, 32),
        "decoder/layers_0/self_attention/query": (32, 4, 8),
        "decoder/layers_0/self_attention/value": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_1/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "decoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "decoder/layers_1/moe/experts/wo": (8, 64, 32),
        "decoder/layers_1/moe/router/kernel": (32, 8),
        "decoder/layers_1/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_1/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_1/self_attention/key": (32, 4, 8),
        "decoder/layers_1/self_attention/out": (4, 8, 32),
        "decoder/layers_1/self_attention/query": (32, 4, 8),
        "decoder/layers_1/self_attention/value": (32, 4, 8),
        "decoder/logits_dense": (32, 512),
        "decoder/relpos_bias/rel_embedding": (32, 4),
        "encoder/encoder_norm/scale": (32,),
        "encoder/layers_0/attention/key": (32, 4, 8),
        "encoder/layers_0/attention/out": (4, 8, 32),
        "encoder/layers_0/attention/query": (32, 4, 8),
        "encoder/layers_0/attention/value": (32, 4, 8),
        "encoder/layers_0/mlp/wi_0": (32, 64),
        "encoder/layers_0/mlp/wi_1": (32, 64),
        "encoder/layers_0/mlp/wo": (64, 32),
        "encoder/layers_0/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "encoder/layers_1/attention/key": (32, 4, 8),
        "encoder/layers_1/attention/out": (4, 8, 32),
        "encoder/layers_1/attention/query": (32, 4, 8),
        "encoder/layers_1/attention/value": (32, 4, 8),
        "encoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "encoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "encoder/layers_1/moe/experts/wo": (8, 64, 32),
        "encoder/layers_1/moe/router/kernel": (32, 8),
        "encoder/layers_1/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "encoder/relpos_bias/rel_embedding": (32, 4),
        "token_embedder/embedding": (512, 32),
    },
    "gs_tiny": {
        "decoder/decoder_norm/scale": (32,),
        "decoder/layers_0/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_0/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_0/mlp/wi_0": (32, 64),
        "decoder/layers_0/mlp/wi_1": (32, 64),
        "decoder/layers_0/mlp/wo": (64, 32),
        "decoder/layers_0/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_0/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_0/self_attention/key": (32, 4, 8),
        "decoder/layers_0/self_attention/out": (4, 8, 32),
        "decoder/layers_0/self_attention/query": (32, 4, 8),
        "decoder/layers_0/self_attention/value": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_1/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "decoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "decoder/layers_1/moe/experts/wo": (8, 64, 32),
        "decoder/layers_1/moe/router/kernel": (32, 8),
        "decoder/layers_1/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_1/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_1/self_attention/key": (32, 4, 8),
        "decoder/layers_1/self_attention/out": (4, 8, 32),
        "decoder/layers_1/self_attention/query": (32, 4, 8),
        "decoder/layers_1/self_attention/value": (32, 4, 8),
        "decoder/logits_dense": (32, 512),
        "decoder/relpos_bias/rel_embedding": (32, 4),
        "encoder/encoder_norm/scale": (32,),
        "encoder/layers_0/attention/key": (32, 4, 8),
        "encoder/layers_0/attention/out": (4, 8, 32),
        "encoder/layers_0/attention/query": (32, 4, 8),
        "encoder/layers_0/attention/value": (32, 4, 8),
        "encoder/layers_0/mlp/wi_0": (32, 64),
        "encoder/layers_0/mlp/wi_1": (32, 64),
        "encoder/layers_0/mlp/wo": (64, 32),
        "encoder/layers_0/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "encoder/layers_1/attention/key": (32, 4, 8),
        "encoder/layers_1/attention/out": (4, 8, 32),
        "encoder/layers_1/attention/query": (32, 4, 8),
        "encoder/layers_1/attention/value": (32, 4, 8),
        "encoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "encoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "encoder/layers_1/moe/experts/wo": (8, 64, 32),
        "encoder/layers_1/moe/router/kernel": (32, 8),
        "encoder/layers_1/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "encoder/relpos_bias/rel_embedding": (32, 4),
        "token_embedder/embedding": (512, 32),
    },
    "st_moe_tiny": {
        "decoder/decoder_norm/scale": (32,),
        "decoder/layers_0/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_0/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_0/mlp/wi_0": (32, 64),
        "decoder/layers_0/mlp/wi_1": (32, 64),
        "decoder/layers_0/mlp/wo": (64, 32),
        "decoder/layers_0/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_0/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_0/self_attention/key": (32, 4, 8),
        "decoder/layers_0/self_attention/out": (4, 8, 32),
        "decoder/layers_0/self_attention/query": (32, 4, 8),
        "decoder/layers_0/self_attention/value": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_1/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "decoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "decoder/layers_1/moe/experts/wo": (8, 64, 32),
        "decoder/layers_1/moe/extra_mlp/wi_0": (32, 64),
        "decoder/layers_1/moe/extra_mlp/wi_1": (32, 64),
        "decoder/layers_1/moe/extra_mlp/wo": (64, 32),
        "decoder/layers_1/moe/router/kernel": (32, 8),
        "decoder/layers_1/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_1/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_1/self_attention/key": (32, 4, 8),
        "decoder/layers_1/self_attention/out": (4, 8, 32),
        "decoder/layers_1/self_attention/query": (32, 4, 8),
        "decoder/layers_1/self_attention/value": (32, 4, 8),
        "decoder/logits_dense": (32, 512),
        "decoder/relpos_bias/rel_embedding": (32, 4),
        "encoder/encoder_norm/scale": (32,),
        "encoder/layers_0/attention/key": (32, 4, 8),
        "encoder/layers_0/attention/out": (4, 8, 32),
        "encoder/layers_0/attention/query": (32, 4, 8),
        "encoder/layers_0/attention/value": (32, 4, 8),
        "encoder/layers_0/mlp/wi_0": (32, 64),
        "encoder/layers_0/mlp/wi_1": (32, 64),
        "encoder/layers_0/mlp/wo": (64, 32),
        "encoder/layers_0/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "encoder/layers_1/attention/key": (32, 4, 8),
        "encoder/layers_1/attention/out": (4, 8, 32),
        "encoder/layers_1/attention/query": (32, 4, 8),
        "encoder/layers_1/attention/value": (32, 4, 8),
        "encoder/layers_1/moe/experts/wi_0": (8, 32, 64),
        "encoder/layers_1/moe/experts/wi_1": (8, 32, 64),
        "encoder/layers_1/moe/experts/wo": (8, 64, 32),
        "encoder/layers_1/moe/extra_mlp/wi_0": (32, 64),
        "encoder/layers_1/moe/extra_mlp/wi_1": (32, 64),
        "encoder/layers_1/moe/extra_mlp/wo": (64, 32),
        "encoder/layers_1/moe/router/kernel": (32, 8),
        "encoder/layers_1/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "encoder/relpos_bias/rel_embedding": (32, 4),
        "token_embedder/embedding": (512, 32),
    },
    "switch_tiny_8": {
        "decoder/decoder_norm/scale": (32,),
        "decoder/layers_0/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_0/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_0/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_0/mlp/wi": (32, 64),
        "decoder/layers_0/mlp/wo": (64, 32),
        "decoder/layers_0/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_0/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_0/self_attention/key": (32, 4, 8),
        "decoder/layers_0/self_attention/out": (4, 8, 32),
        "decoder/layers_0/self_attention/query": (32, 4, 8),
        "decoder/layers_0/self_attention/value": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/key": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/out": (4, 8, 32),
        "decoder/layers_1/encoder_decoder_attention/query": (32, 4, 8),
        "decoder/layers_1/encoder_decoder_attention/value": (32, 4, 8),
        "decoder/layers_1/moe/experts/wi": (8, 32, 64),
        "decoder/layers_1/moe/experts/wo": (8, 64, 32),
        "decoder/layers_1/moe/router/kernel": (32, 8),
        "decoder/layers_1/pre_cross_attention_layer_norm/scale": (32,),
        "decoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "decoder/layers_1/pre_self_attention_layer_norm/scale": (32,),
        "decoder/layers_1/self_attention/key": (32, 4, 8),
        "decoder/layers_1/self_attention/out": (4, 8, 32),
        "decoder/layers_1/self_attention/query": (32, 4, 8),
        "decoder/layers_1/self_attention/value": (32, 4, 8),
        "decoder/relpos_bias/rel_embedding": (32, 4),
        "encoder/encoder_norm/scale": (32,),
        "encoder/layers_0/attention/key": (32, 4, 8),
        "encoder/layers_0/attention/out": (4, 8, 32),
        "encoder/layers_0/attention/query": (32, 4, 8),
        "encoder/layers_0/attention/value": (32, 4, 8),
        "encoder/layers_0/mlp/wi": (32, 64),
        "encoder/layers_0/mlp/wo": (64, 32),
        "encoder/layers_0/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_0/pre_mlp_layer_norm/scale": (32,),
        "encoder/layers_1/attention/key": (32, 4, 8),
        "encoder/layers_1/attention/out": (4, 8, 32),
        "encoder/layers_1/attention/query": (32, 4, 8),
        "encoder/layers_1/attention/value": (32, 4, 8),
        "encoder/layers_1/moe/experts/wi": (8, 32, 64),
        "encoder/layers_1/moe/experts/wo": (8, 64, 32),
        "encoder/layers_1/moe/router/kernel": (32, 8),
        "encoder/layers_1/pre_attention_layer_norm/scale": (32,),
        "encoder/layers_1/pre_mlp_layer_norm/scale": (32,),
        "encoder/relpos_bias/rel_embedding": (32, 4),
        "token_embedder/embedding": (512, 32),
    },
}
PINNED_OUTPUTS = {
    "decoder_top1_shared_extra_bias": {
        "fraction_dropped": 0.0833333,
        "load_balancing_loss": 1.6562761,
        "router_z_loss": 62.0948219,
        "y_abs_sum": 658.454895,
        "y_corner": [
            [-0.8267508, 0.120647, 0.723922, -0.3405161],
            [-1.4009765, 0.3715214, 0.5985214, 0.7504638],
        ],
        "y_sum": 22.4589577,
    },
    "dropless_top2": {
        "fraction_dropped": 0.0,
        "load_balancing_loss": 2.386977,
        "router_z_loss": 47.3432617,
        "y_abs_sum": 355.0292969,
        "y_corner": [
            [0.225273, -0.1268291, -0.4383999, -0.4965521],
            [1.3593096, 0.0187534, 0.2455479, -0.9988082],
        ],
        "y_sum": 8.0044594,
    },
    "einsum_top2_bpr_padding": {
        "fraction_dropped": 0.3571429,
        "load_balancing_loss": 2.50278,
        "router_z_loss": 43.8115005,
        "y_abs_sum": 261.1099243,
        "y_corner": [
            [0.225273, -0.1268291, -0.4383999, -0.4965521],
            [1.3369454, 0.035711, 0.2220042, -0.9568984],
        ],
        "y_sum": -0.1244812,
    },
    "experts_choose": {
        "fraction_dropped": 0.0,
        "load_balancing_loss": 0.0,
        "router_z_loss": 47.3432617,
        "y_abs_sum": 331.1674805,
        "y_corner": [
            [0.2251813, -0.1269391, -0.4385135, -0.4966574],
            [1.3369454, 0.035711, 0.2220042, -0.9568984],
        ],
        "y_sum": 2.8733006,
    },
    "gather_top2": {
        "fraction_dropped": 0.3958333,
        "load_balancing_loss": 2.386977,
        "router_z_loss": 47.3432617,
        "y_abs_sum": 324.7420044,
        "y_corner": [
            [0.225273, -0.1268291, -0.4383999, -0.4965521],
            [1.3369454, 0.035711, 0.2220042, -0.9568984],
        ],
        "y_sum": 3.8701143,
    },
    "train_jitter_expert_dropout": {
        "fraction_dropped": 0.4166667,
        "load_balancing_loss": 2.4362674,
        "router_z_loss": 47.3502235,
        "y_abs_sum": 363.0740662,
        "y_corner": [
            [-0.1507181, 0.0537823, -0.8628139, -0.2396576],
            [0.9206018, 0.5020191, 0.4440182, 0.0908806],
        ],
        "y_sum": 10.4581528,
    },
}


@pytest.mark.parametrize("name", MODELS)
def test_model_param_tree_paths_and_shapes_are_pinned(name):
    assert model_param_shapes(name) == PINNED_PARAM_SHAPES[name]


@pytest.mark.parametrize("case", sorted(CASES))
def test_moe_block_fixed_input_outputs_are_pinned(case):
    got = run_case(case)
    want = PINNED_OUTPUTS[case]
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], np.asarray(value, np.float32), rtol=1e-5,
                                   atol=1e-5, err_msg=f"{case}: {key}")  # fmt: skip


if __name__ == "__main__":
    import pprint

    print("PINNED_PARAM_SHAPES = ", end="")
    pprint.pprint({name: model_param_shapes(name) for name in MODELS}, width=100)
    print("PINNED_OUTPUTS = ", end="")
    pprint.pprint(
        {
            case: {k: np.round(v.astype(np.float64), 7).tolist() for k, v in run_case(case).items()}
            for case in sorted(CASES)
        },
        width=100,
    )
