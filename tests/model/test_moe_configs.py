"""MoE sizes, their gin files, and MoeConfig validation."""

import pathlib
import re

import pytest

from flan_moe.model.config import SIZES, ModelConfig, MoeConfig, get_config

GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin_configs" / "models"
MOE_SIZES = sorted(n for n, c in SIZES.items() if c.is_moe)


def test_every_moe_size_has_a_gin_file_naming_it():
    expected = {f"switch_base_{e}" for e in (8, 16, 32, 64, 128, 256)}
    expected |= {"switch_large_128", "gs_base", "ec_base", "st_moe_base", "st_moe_32b"}
    expected |= {"switch_tiny_8", "gs_tiny", "ec_tiny", "st_moe_tiny"}
    assert expected <= set(MOE_SIZES)
    for name in [*MOE_SIZES, "switch_base_dense", "switch_large_dense", "switch_tiny_dense"]:
        text = (GIN_DIR / f"{name}.gin").read_text()
        assert text.startswith(f"# {name}: ")
        assert re.findall(r'^MODEL_NAME = "([^"]+)"$', text, re.M) == [name]
        assert get_config(name).name == name


def test_paper_settings():
    switch = get_config("switch_base_8")
    assert (switch.d_model, switch.d_ff, switch.num_heads, switch.mlp_activation) == (
        768,
        3072,
        12,
        "relu",
    )
    assert [i for i in range(12) if switch.moe.is_sparse(i, decoder=False)] == [1, 3, 5, 7, 9, 11]
    m = switch.moe
    assert (m.num_selected_experts, m.capacity_factor_train, m.capacity_factor_eval) == (
        1,
        1.25,
        2.0,
    )
    assert (m.aux_loss_coef, m.router_z_loss_coef) == (0.01, 0.0)
    st = get_config("st_moe_32b")
    assert (st.d_model, st.num_heads, st.head_dim, st.d_ff, st.num_encoder_layers) == (
        5120,
        64,
        128,
        20480,
        24,
    )
    # flaxformer's MIXED layout: every 4th layer is sparse, the last of each block of 4.
    assert [i for i in range(24) if st.moe.is_sparse(i, decoder=True)] == [3, 7, 11, 15, 19, 23]
    assert st.moe.extra_dense_mlp
    assert (st.moe.num_experts, st.moe.num_selected_experts, st.moe.router_z_loss_coef) == (
        64,
        2,
        0.001,
    )
    ec = get_config("ec_base").moe
    assert ec.router_type(decoder=False) == "experts_choose"
    assert ec.router_type(decoder=True) == "tokens_choose" and ec.num_selected(decoder=True) == 2


@pytest.mark.parametrize("name", MOE_SIZES)
def test_moe_config_round_trips_through_dict(name):
    config = get_config(name).replace(
        moe=get_config(name).moe.replace(encoder_sparse_layers=(0, 1))
    )
    assert ModelConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(decoder_router="experts_choose"), "not allowed in the decoder"),
        (dict(encoder_router="experts_choose", dispatch="gather", dropless=True), "tokens-choose"),
        (dict(num_selected_experts=3, num_experts=2), "only 2"),
        (dict(capacity_factor_train=0.0, min_expert_capacity=0), "no buffer slots"),
        (dict(expert_dropout_rate=1.0), "expert_dropout_rate"),
        (dict(dispatch="ragged"), "dispatch"),
        (dict(num_groups_multiple=0), "num_groups_multiple"),
    ],
)
def test_bad_moe_configs_are_clear_errors(changes, match):
    with pytest.raises(ValueError, match=match):
        MoeConfig(**changes)


def test_fine_grained_experts():
    moe = MoeConfig(num_experts=16, num_selected_experts=2, expert_granularity=4)
    assert moe.num_selected(decoder=False) == 8 and moe.expert_d_ff(2048) == 512
    with pytest.raises(ValueError, match="divisible"):
        moe.expert_d_ff(2050)
