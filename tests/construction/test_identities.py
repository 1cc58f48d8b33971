"""The identities a dense -> MoE construction must satisfy (float32, fixed tolerances).

lineage.md §1-2: with identical experts, renormalised top-k weights and no dropped
tokens, the upcycled model IS the dense model (for any router); Switch top-1 without
renormalisation scales the dense output by p_top1 (1/E for a zero router); a split FFN
with every expert active at weight 1 and scale 1 sums back to the dense FFN.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.construction import (
    ConstructionError,
    Placement,
    RouterRecipe,
    SplitRecipe,
    UpcycleRecipe,
    construct,
)
from flan_moe.model.config import MoeConfig, get_config
from flan_moe.model.layers import MlpBlock
from flan_moe.model.moe import ExpertMlp, MoeBlock
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.training.checkpoints import CheckpointMismatchError
from tests.random_params import random_params

SIMPLE, COMPOSITE = 1e-5, 1e-4
DENSE = get_config("tiny", dtype="float32")  # gated-GELU, d_ff 64, 2+2 layers
RELU = get_config("switch_tiny_dense", dtype="float32")  # ReLU (T5 1.0), tied head


@pytest.fixture(scope="module")
def dense_params():
    return random_params(EncoderDecoder(DENSE), seed=0)


@pytest.fixture(scope="module")
def tokens():
    rng = np.random.default_rng(1)
    enc = jnp.asarray(rng.integers(2, DENSE.vocab_size, (2, 12)), jnp.int32)
    dec_in = jnp.asarray(rng.integers(2, DENSE.vocab_size, (2, 6)), jnp.int32)
    return enc.at[1, 9:].set(0), dec_in


def logits(config, params, tokens):
    enc, dec = tokens
    return EncoderDecoder(config).apply({"params": params}, enc, dec, dec, enable_dropout=False)


@pytest.fixture(scope="module")
def dense_logits(dense_params, tokens):
    return np.asarray(logits(DENSE, dense_params, tokens))


def _mlp_input(d_model, seed=2):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(2, 10, d_model)), jnp.float32)


def _dense_mlp(config, mlp_params, x):
    return MlpBlock(config).apply({"params": mlp_params}, x, enable_dropout=False)


def _moe(config, block_params, x):
    return MoeBlock(config, decoder=False).apply(
        {"params": block_params}, x, padding_mask=None, enable_dropout=False,
        mutable=["moe_losses", "moe_metrics"],
    )[0]  # fmt: skip


# --- upcycling -----------------------------------------------------------------------


@pytest.mark.parametrize("router", ["fresh", "zero"])
def test_upcycled_top2_renormalised_dropless_is_the_dense_model(
    router, dense_params, tokens, dense_logits
):
    recipe = UpcycleRecipe(
        num_experts=4, num_selected_experts=2, placement=Placement(every=1),
        router=RouterRecipe(init=router),
    )  # fmt: skip
    params, config, _ = construct(dense_params, DENSE, recipe)
    assert config.moe.dropless and config.moe.renormalize_top_k
    np.testing.assert_allclose(logits(config, params, tokens), dense_logits, atol=COMPOSITE)


@pytest.mark.parametrize("formula", ["times_k", "flaxformer"])
def test_upcycled_identity_holds_with_capacity_when_nothing_overflows(
    formula, dense_params, tokens, dense_logits
):
    """The capacity trap: a zero router sends every token to experts 0..k-1, so each of
    them needs T slots per group of T tokens. Capacity is round(cf * k * T / E) with
    ``capacity_formula="times_k"`` (so cf >= E/k suffices) and round(cf * T / E) with
    flaxformer's (cf >= E). Below that, tokens are dropped (their MoE output is 0) and the
    identity breaks."""
    e, k = 4, 2
    base = MoeConfig(renormalize_top_k=True, dispatch="einsum", min_expert_capacity=0,
                     capacity_formula=formula)  # fmt: skip

    def run(cf):
        moe = base.replace(capacity_factor_eval=cf)
        recipe = UpcycleRecipe(num_experts=e, num_selected_experts=k, moe=moe,
                               router=RouterRecipe(init="zero"))  # fmt: skip
        params, config, _ = construct(dense_params, DENSE, recipe)
        return np.asarray(logits(config, params, tokens))

    enough = e / k if formula == "times_k" else float(e)
    np.testing.assert_allclose(run(enough), dense_logits, atol=COMPOSITE)
    assert np.max(np.abs(run(1.0) - dense_logits)) > 1e-2


def test_upcycled_layer_equals_dense_mlp_for_any_router(dense_params):
    recipe = UpcycleRecipe(num_experts=4, num_selected_experts=2, placement=Placement(every=1),
                           router=RouterRecipe(init="fresh", seed=7))  # fmt: skip
    params, config, _ = construct(dense_params, DENSE, recipe)
    block = jax.tree_util.tree_map(jnp.asarray, params["encoder"]["layers_0"]["moe"])
    block["router"]["kernel"] = block["router"]["kernel"] * 50.0  # a sharp, arbitrary router
    x = _mlp_input(DENSE.d_model)
    want = _dense_mlp(DENSE, dense_params["encoder"]["layers_0"]["mlp"], x)
    np.testing.assert_allclose(_moe(config, block, x), want, atol=SIMPLE)


def test_upcycled_layer_with_k_equal_e_needs_no_renormalisation(dense_params):
    """k = E: the softmax weights of all experts already sum to one."""
    moe = MoeConfig(renormalize_top_k=False, dispatch="gather", dropless=True)
    recipe = UpcycleRecipe(num_experts=4, num_selected_experts=4, moe=moe)
    params, config, _ = construct(dense_params, DENSE, recipe)
    x = _mlp_input(DENSE.d_model)
    want = _dense_mlp(DENSE, dense_params["decoder"]["layers_1"]["mlp"], x)
    got = _moe(config, params["decoder"]["layers_1"]["moe"], x)
    np.testing.assert_allclose(got, want, atol=SIMPLE)


def test_switch_top1_without_renormalisation_scales_by_p_top1():
    dense_params = random_params(EncoderDecoder(RELU), seed=3)
    mlp = dense_params["encoder"]["layers_1"]["mlp"]
    x = _mlp_input(RELU.d_model)
    f = np.asarray(_dense_mlp(RELU, mlp, x))
    moe = MoeConfig(renormalize_top_k=False, dispatch="gather", dropless=True)
    for router in ("zero", "fresh"):
        recipe = UpcycleRecipe(num_experts=8, num_selected_experts=1, moe=moe,
                               router=RouterRecipe(init=router))  # fmt: skip
        params, config, _ = construct(dense_params, RELU, recipe)
        block = params["encoder"]["layers_1"]["moe"]
        y = np.asarray(_moe(config, block, x))
        if router == "zero":
            np.testing.assert_allclose(y, f / 8, atol=SIMPLE)
        else:
            probs = jax.nn.softmax(np.asarray(x) @ block["router"]["kernel"], axis=-1)
            p_top1 = np.asarray(probs.max(-1, keepdims=True))
            np.testing.assert_allclose(y, p_top1 * f, atol=SIMPLE)


def test_upcycled_experts_are_bit_exact_copies_and_the_router_is_fresh(dense_params):
    recipe = UpcycleRecipe(num_experts=4, num_selected_experts=2)
    params, config, reports = construct(dense_params, DENSE, recipe)
    assert config.moe.encoder_sparse_layers == (1,) and config.moe.decoder_sparse_layers == (1,)
    assert [r.layer for r in reports] == ["encoder/layers_1", "decoder/layers_1"]
    for stack in ("encoder", "decoder"):
        dense = dense_params[stack]["layers_1"]["mlp"]
        sparse = params[stack]["layers_1"]["moe"]
        for name in ("wi_0", "wi_1", "wo"):
            for e in range(4):
                np.testing.assert_array_equal(sparse["experts"][name][e], dense[name])
        kernel = sparse["router"]["kernel"]
        assert kernel.shape == (DENSE.d_model, 4) and np.std(kernel) > 0.01
        # dense layer 0 loads 1:1
        np.testing.assert_array_equal(
            params[stack]["layers_0"]["mlp"]["wo"], dense_params[stack]["layers_0"]["mlp"]["wo"]
        )
    np.testing.assert_array_equal(
        params["token_embedder"]["embedding"], dense_params["token_embedder"]["embedding"]
    )


def test_noise_and_drop_upcycling(dense_params):
    f = DENSE.d_ff
    recipe = UpcycleRecipe(num_experts=4, num_selected_experts=2, drop_fraction=0.25, seed=1)
    params, _, _ = construct(dense_params, DENSE, recipe)
    dense = dense_params["encoder"]["layers_1"]["mlp"]
    experts = params["encoder"]["layers_1"]["moe"]["experts"]
    changed_sets = []
    for e in range(4):
        changed = np.flatnonzero(np.any(experts["wi_0"][e] != dense["wi_0"], axis=0))
        assert len(changed) == round(0.25 * f)  # exactly r * d_ff units re-drawn
        rows = np.flatnonzero(np.any(experts["wo"][e] != dense["wo"], axis=1))
        np.testing.assert_array_equal(rows, changed)  # the same units in wi and wo
        changed_sets.append(tuple(changed))
    assert len(set(changed_sets)) > 1  # each expert draws its own units
    noisy, _, _ = construct(dense_params, DENSE, UpcycleRecipe(noise_std=1e-3))
    diff = noisy["encoder"]["layers_1"]["moe"]["experts"]["wo"] - dense["wo"][None]
    assert 5e-4 < np.std(diff) < 2e-3


# --- splitting ----------------------------------------------------------------------


def _importance(config, seed=5):
    rng = np.random.default_rng(seed)
    return {
        name: rng.random((8, config.d_ff))
        for name in ("encoder/layers_0", "encoder/layers_1", "decoder/layers_0", "decoder/layers_1")
    }


@pytest.mark.parametrize(
    "method,shared", [("random", 0), ("random", 2), ("clustering", 0), ("sharing_inter", 2)]
)
def test_split_experts_all_active_weight_one_scale_one_sum_to_the_dense_ffn(
    method, shared, dense_params
):
    recipe = SplitRecipe(method=method, num_experts=6 if shared else 8, num_shared_experts=shared,
                         num_selected_experts=2, scale_factor=1.0)  # fmt: skip
    scores = {k: v[: recipe.num_experts] for k, v in _importance(DENSE).items()}
    params, config, reports = construct(dense_params, DENSE, recipe, importance=scores)
    x = _mlp_input(DENSE.d_model)
    for stack in ("encoder", "decoder"):
        block = params[stack]["layers_0"]["moe"]
        e = recipe.num_experts
        buffers = jnp.broadcast_to(x.reshape(1, 1, -1, DENSE.d_model), (e, 1, 20, DENSE.d_model))
        width = config.moe.expert_d_ff(DENSE.d_ff)
        routed = ExpertMlp(config, e, width, 0.0).apply(
            {"params": block["experts"]}, buffers, enable_dropout=False
        )
        y = jnp.sum(routed, axis=0).reshape(x.shape)
        if shared:
            y = y + MlpBlock(config, d_ff=shared * width).apply(
                {"params": block["shared_experts"]}, x, enable_dropout=False
            )
        want = _dense_mlp(DENSE, dense_params[stack]["layers_0"]["mlp"], x)
        np.testing.assert_allclose(y, want, atol=SIMPLE)
    assert all(r.neurons_covered == DENSE.d_ff for r in reports)


def test_split_moe_block_with_zero_router_k_equals_e_and_scale_e_is_the_dense_ffn(dense_params):
    """Through the real MoeBlock: zero router, k = E, no renormalisation gives each expert
    weight 1/E; the scale factor E folded into wo makes it 1, so the block == dense."""
    moe = MoeConfig(renormalize_top_k=False, dispatch="gather", dropless=True)
    recipe = SplitRecipe(method="random", num_experts=4, num_selected_experts=4, scale_factor=4.0,
                         router=RouterRecipe(init="zero"), moe=moe)  # fmt: skip
    params, config, _ = construct(dense_params, DENSE, recipe)
    x = _mlp_input(DENSE.d_model)
    want = _dense_mlp(DENSE, dense_params["encoder"]["layers_1"]["mlp"], x)
    np.testing.assert_allclose(_moe(config, params["encoder"]["layers_1"]["moe"], x), want,
                               atol=SIMPLE)  # fmt: skip


def test_split_uses_one_partition_for_wi_0_wi_1_and_wo(dense_params):
    params, _, _ = construct(dense_params, DENSE, SplitRecipe(method="random", scale_factor=2.0))
    dense = dense_params["encoder"]["layers_0"]["mlp"]
    experts = params["encoder"]["layers_0"]["moe"]["experts"]
    for e in range(8):
        cols = [int(np.flatnonzero(np.all(dense["wi_0"] == experts["wi_0"][e][:, [j]], axis=0))[0])
                for j in range(8)]  # fmt: skip
        np.testing.assert_array_equal(experts["wi_1"][e], np.asarray(dense["wi_1"])[:, cols])
        np.testing.assert_allclose(experts["wo"][e], 2.0 * np.asarray(dense["wo"])[cols, :],
                                   rtol=0, atol=0)  # fmt: skip


# --- errors -------------------------------------------------------------------------


def test_shape_mismatch_between_checkpoint_and_target_is_a_clear_error(dense_params):
    wrong = DENSE.replace(d_ff=128)
    with pytest.raises(
        CheckpointMismatchError, match=r"mlp/wi_0: checkpoint \(32, 64\) != model \(32, 128\)"
    ):
        construct(dense_params, wrong, UpcycleRecipe())
    with pytest.raises(ConstructionError, match="does not divide into"):
        construct(dense_params, DENSE, SplitRecipe(num_experts=5))
    with pytest.raises(ConstructionError, match="needs importance scores"):
        construct(dense_params, DENSE, SplitRecipe(method="sharing_inner"))
    with pytest.raises(ConstructionError, match="already sparse"):
        construct(dense_params, get_config("gs_tiny"), UpcycleRecipe())
    with pytest.raises(ConstructionError, match="do not exist"):
        construct(dense_params, DENSE, UpcycleRecipe(placement=Placement(encoder_layers=(5,))))
