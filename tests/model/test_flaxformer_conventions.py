"""The paper sizes route, drop and weigh their router losses as flaxformer / t5x do.

Every expected number below was produced by running the reference code itself
(google/flaxformer ``flaxformer/architectures/moe/routing.py``:
``TokensChooseMaskedRouter._compute_routing_instructions``, ``_load_balancing_loss``,
``_router_z_loss``; ``flaxformer/architectures/moe/moe_layers.py``: ``_num_groups`` and
``MoeLayer``'s capacity ``max(int(round(cf * tokens_per_group / E)), 4)``) outside this
repository on the inputs that ``_case_inputs`` builds (numpy ``default_rng(seed)``:
tokens ``normal``, router kernel ``0.05 * normal``), with float32 router math.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.interop.hf_switch import config_from_hf_switch
from flan_moe.model import routing
from flan_moe.model.config import get_config
from flan_moe.model.moe import collect_moe_metrics, collect_router_losses
from tests.model.test_moe import init

# flaxformer moe_layers._num_groups(num_tokens, max_group_size, num_experts, replicas).
FLAXFORMER_NUM_GROUPS = {
    (512, 4096, 8, 1): 8,
    (2048, 4096, 32, 1): 32,
    (65536, 4096, 32, 1): 32,
    (131072, 8192, 8, 1): 16,
    (131072, 4096, 64, 2): 128,
    (24, 12, 4, 1): 4,
    (96, 8, 4, 1): 12,
    (40960, 4096, 8, 1): 16,
}

# name: (size, batch, length, seed, groups, tokens per group, train capacity, aux, z,
#        kept choices, tokens with a dropped choice, checksum of the kept assignments).
FLAXFORMER_ROUTING = {
    "switch_base_8": (
        "switch_base_8", 4, 128, 0, 8, 64, 10, 1.0483040809631348, 8.163841247558594, 487,
        [49, 51, 59, 63, 106, 107, 120, 122, 123, 124, 125, 165, 170, 185, 189, 250, 368,
         369, 441, 488, 490, 506, 507, 509, 510],
        1833396641,
    ),
    "gs_base": (
        "gs_base", 4, 256, 1, 32, 32, 4, 2.3176183700561523, 19.10560417175293, 1979,
        [25, 41, 42, 61, 83, 99, 113, 129, 131, 174, 190, 216, 233, 257, 261, 280, 285, 289,
         290, 292, 293, 374, 401, 411, 416, 419, 452, 463, 481, 485, 506, 521, 528, 542,
         564, 578, 582, 590, 611, 623, 625, 626, 641, 673, 680, 742, 743, 745, 749, 764,
         767, 771, 772, 799, 825, 830, 845, 902, 909, 925, 926, 947, 961, 969, 973, 992,
         1006, 1014, 1015],
        785448912,
    ),
}  # fmt: skip


@pytest.mark.parametrize("args", sorted(FLAXFORMER_NUM_GROUPS))
def test_group_count_is_flaxformers(args):
    tokens, max_group_size, experts, replicas = args
    got = routing.flaxformer_num_groups(
        num_tokens=tokens,
        max_group_size=max_group_size,
        num_experts=experts,
        num_expert_replicas=replicas,
    )
    assert got == FLAXFORMER_NUM_GROUPS[args]


def test_group_count_falls_back_where_flaxformer_would_pad():
    moe = get_config("switch_base_8").moe
    # 3 tokens (a decoding step of batch 3) are no multiple of 8 experts: flaxformer pads;
    # we use the max_group_size rule, which gives one group.
    assert routing.flaxformer_num_groups(num_tokens=3, max_group_size=4096, num_experts=8) is None
    assert routing.group_count(moe, 3) == 1
    assert routing.group_count(moe.replace(group_count="max_group_size"), 512) == 1


def test_capacity_has_no_factor_k_by_default():
    gs = get_config("gs_base").moe
    # flaxformer: round(1.25 * 4096 / 32) = 160 slots for top-2 (the example);
    # "times_k" doubles it.
    assert routing.capacity_for(gs, tokens_per_group=4096, decoder=False, train=True) == 160
    times_k = gs.replace(capacity_formula="times_k")
    assert routing.capacity_for(times_k, tokens_per_group=4096, decoder=False, train=True) == 320


def _case_inputs(size, b, length, seed):
    cfg = get_config(size, dtype="float32")
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(b, length, cfg.d_model)).astype(np.float32)
    kernel = (rng.normal(size=(cfg.d_model, cfg.moe.num_experts)) * 0.05).astype(np.float32)
    return cfg, jnp.asarray(x), jnp.asarray(kernel)


def _checksum(routing_out):
    g, s, kk = routing_out.kept.shape
    gi, si, ki = np.nonzero(np.asarray(routing_out.kept))
    e = np.asarray(routing_out.expert_index)[gi, si, ki].astype(np.int64)
    c = np.asarray(routing_out.slot)[gi, si, ki].astype(np.int64)
    return int((gi * 1000003 + si * 7919 + e * 131 + c).sum() % 2**31)


@pytest.mark.parametrize("name", sorted(FLAXFORMER_ROUTING))
def test_paper_size_routing_and_losses_equal_flaxformers(name):
    size, b, length, seed, groups, tpg, cap, aux, z, kept, dropped, checksum = FLAXFORMER_ROUTING[
        name
    ]
    cfg, x, kernel = _case_inputs(size, b, length, seed)
    moe = cfg.moe
    assert routing.group_count(moe, b * length) == groups and b * length // groups == tpg
    assert routing.capacity_for(moe, tokens_per_group=tpg, decoder=False, train=True) == cap

    # The routing itself (encoder layer, training capacity).
    k = moe.num_selected(decoder=False)
    xg = x.reshape(groups, tpg, -1)
    logits = routing.RouterWeights(moe.num_experts).apply(
        {"params": {"kernel": kernel}}, xg, enable_dropout=False
    )
    probs = jax.nn.softmax(logits, axis=-1)
    out = routing.tokens_choose(
        probs, k=k, capacity=cap, batch_prioritized=moe.batch_prioritized_routing
    )
    per_token = np.asarray(out.kept).sum(-1).reshape(-1)
    assert int(per_token.sum()) == kept
    assert np.nonzero(per_token < k)[0].tolist() == dropped
    assert _checksum(out) == checksum

    # The whole block (small experts: routing does not depend on them) sows the same
    # losses and drops as many choices.
    small = cfg.replace(moe=moe.replace(expert_mlp_dim=4, expert_dropout_rate=0.0))
    block, params = init(small, x, None)
    params["router"]["kernel"] = kernel
    _, state = block.apply(
        {"params": params}, x, padding_mask=None, enable_dropout=True,
        mutable=["moe_losses", "moe_metrics"],
    )  # fmt: skip
    losses = collect_router_losses(state["moe_losses"])
    np.testing.assert_allclose(float(losses["load_balancing_loss"]), aux, rtol=1e-5)
    np.testing.assert_allclose(float(losses["router_z_loss"]), z, rtol=1e-5)
    dropped_share = float(collect_moe_metrics(state["moe_metrics"])["fraction_dropped"])
    np.testing.assert_allclose(dropped_share, (b * length * k - kept) / (b * length * k))

    # Hugging Face / DeepSeekMoE normalisation divides by k.
    per_choice = routing.load_balancing_loss(probs, out.expert_index, normalization="per_choice")
    np.testing.assert_allclose(float(per_choice), aux / k, rtol=1e-5)


def test_router_losses_combine_as_t5x_mean_over_all_sparse_layers():
    # t5x contrib/moe/models.py: _extract_diversity_metrics sums each sown loss over all
    # sparse layers and divides by their count; Hugging Face sums the stack means.
    def layer(aux, z):
        return {"moe": {"load_balancing_loss": jnp.float32(aux), "router_z_loss": jnp.float32(z)}}

    sown = {
        "encoder": {"layers_1": layer(1.0, 10.0)},
        "decoder": {"layers_1": layer(2.0, 20.0), "layers_3": layer(4.0, 40.0)},
    }
    t5x = collect_router_losses(sown, combination="mean_over_layers")
    assert float(t5x["load_balancing_loss"]) == pytest.approx(7.0 / 3.0, rel=1e-6)
    assert float(t5x["router_z_loss"]) == pytest.approx(70.0 / 3.0, rel=1e-6)
    hf = collect_router_losses(sown, combination="sum_of_stack_means")
    assert float(hf["load_balancing_loss"]) == pytest.approx(1.0 + 3.0, rel=1e-6)
    assert float(hf["router_z_loss"]) == pytest.approx(10.0 + 30.0, rel=1e-6)
    # The paper sizes use t5x's rule; the Hugging Face Switch converter keeps HF's.
    for size in ("switch_base_8", "gs_base", "ec_base", "st_moe_base", "st_moe_32b"):
        moe = get_config(size).moe
        assert (moe.router_loss_combination, moe.load_balancing_normalization) == (
            "mean_over_layers",
            "flaxformer",
        )
        assert (moe.capacity_formula, moe.group_count) == ("flaxformer", "flaxformer")
    hf_config = dict(
        vocab_size=64,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_heads=4,
        num_layers=2,
        num_sparse_encoder_layers=1,
        num_sparse_decoder_layers=1,
        num_experts=4,
    )
    hf = config_from_hf_switch(hf_config).moe
    assert (hf.router_loss_combination, hf.load_balancing_normalization) == (
        "sum_of_stack_means",
        "per_choice",
    )
