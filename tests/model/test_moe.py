"""The MoE block against a naive per-token loop; dispatch paths against each other."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from flan_moe.model import routing
from flan_moe.model.config import MoeConfig, get_config
from flan_moe.model.moe import MoeBlock, collect_moe_metrics, collect_router_losses
from tests.model.test_routing import naive_experts_choose, naive_tokens_choose

MUTABLE = ["moe_losses", "moe_metrics"]


def block_config(mlp_activation="gated-gelu", dtype="float32", **moe):
    base = dict(num_experts=4, num_selected_experts=2, max_group_size=12, min_expert_capacity=1)
    base.update(moe)
    return get_config("gs_tiny", dtype=dtype, mlp_activation=mlp_activation).replace(
        moe=MoeConfig(**base)
    )


def inputs(b=2, length=12, d=32, seed=1, pad=False):
    x = jax.random.normal(jax.random.PRNGKey(seed), (b, length, d), jnp.float32)
    mask = np.ones((b, length), bool)
    if pad:
        mask[0, -4:] = False
        mask[1, -1:] = False
    return x, jnp.asarray(mask)


def init(cfg, x, mask, decoder=False, seed=0):
    """The block and random params of the right shapes (no compiled init: faster).

    Matrices are normal / sqrt(fan-in) (router: std 1, for decisive routing), vectors
    normal * 0.1.
    """
    block = MoeBlock(cfg, decoder=decoder)
    abstract = jax.eval_shape(
        lambda: block.init(jax.random.PRNGKey(0), x, padding_mask=mask, enable_dropout=False)
    )
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(nn.unbox(abstract["params"]), sep="/")
    params = {}
    for name, leaf in sorted(flat.items()):
        shape = leaf.shape
        if name == "router/kernel":
            value = rng.normal(size=shape)
        elif len(shape) >= 2:
            value = rng.normal(size=shape) / np.sqrt(shape[-2])
        else:
            value = rng.normal(size=shape) * 0.1
        params[name] = jnp.asarray(value, leaf.dtype)
    return block, traverse_util.unflatten_dict(params, sep="/")


def apply_fn(block, *, enable_dropout=False, jit=True):
    def f(params, x, mask, rng=None):
        rngs = {"dropout": rng} if rng is not None else None
        return block.apply(
            {"params": params},
            x,
            padding_mask=mask,
            enable_dropout=enable_dropout,
            rngs=rngs,
            mutable=MUTABLE,
        )

    return jax.jit(f) if jit else f


# --- naive reference -------------------------------------------------------------


def _np_mlp(x, weights, gated, act):
    if gated:
        return (act(x @ weights["wi_0"]) * (x @ weights["wi_1"])) @ weights["wo"]
    return act(x @ weights["wi"]) @ weights["wo"]


def naive_block(cfg, params, x, mask, *, decoder=False, train=False):
    """Token-by-token MoE output from the raw parameters (numpy, float64 experts)."""
    moe = cfg.moe
    gated = cfg.mlp_activation.startswith("gated")
    if cfg.mlp_activation == "relu":
        act = lambda v: np.maximum(v, 0)
    else:
        act = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    b, length, d = x.shape
    xs = np.asarray(x, np.float64)
    g = routing.group_count(moe, b * length)
    s = b * length // g
    xg = xs.reshape(g, s, d)
    logits = xg @ p["router"]["kernel"] + (p["router"]["bias"] if moe.router_bias else 0.0)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    valid = (
        np.asarray(mask).reshape(g, s)
        if moe.router_ignore_padding_tokens
        else np.ones((g, s), bool)
    )
    e = moe.num_experts
    experts = [{k: v[i] for k, v in p["experts"].items()} for i in range(e)]
    out = np.zeros_like(xg)
    if moe.router_type(decoder=decoder) == "experts_choose":
        cap = routing.capacity_for(moe, tokens_per_group=s, decoder=decoder, train=train)
        _, weight, kept, _ = naive_experts_choose(probs, capacity=cap, valid=valid)
        for gi in range(g):
            for t in range(s):
                for ei in range(e):
                    if kept[gi, t, ei]:
                        out[gi, t] += weight[gi, t, ei] * _np_mlp(
                            xg[gi, t], experts[ei], gated, act
                        )
    else:
        k = moe.num_selected(decoder=decoder)
        cap = (
            s * k
            if moe.dropless
            else routing.capacity_for(moe, tokens_per_group=s, decoder=decoder, train=train)
        )
        index, _, weight, kept, _ = naive_tokens_choose(
            probs, k=k, capacity=cap, valid=valid,
            batch_prioritized=moe.batch_prioritized_routing and not decoder,
            renormalize=moe.renormalize_top_k,
        )  # fmt: skip
        for gi in range(g):
            for t in range(s):
                for j in range(k):
                    if kept[gi, t, j]:
                        y = _np_mlp(xg[gi, t], experts[index[gi, t, j]], gated, act)
                        out[gi, t] += weight[gi, t, j] * y
    out = out.reshape(b, length, d)
    if moe.num_shared_experts:
        out += _np_mlp(xs, p["shared_experts"], gated, act)
    if moe.extra_dense_mlp:
        out += _np_mlp(xs, p["extra_mlp"], gated, act)
    return out


NAIVE_CASES = {
    # Switch: ReLU, top-1, capacity 3 of 12 tokens per group: tokens are dropped.
    "switch_drops": dict(mlp_activation="relu", num_selected_experts=1, capacity_factor_eval=0.5),
    # Top-2, batch-prioritized, padding left out, router bias, gather dispatch, with
    # DeepSeekMoE fine-grained (2x) + shared experts and the ST-MoE extra dense MLP.
    "gated_everything": dict(
        num_experts=8,
        num_selected_experts=1,
        expert_granularity=2,
        num_shared_experts=1,
        extra_dense_mlp=True,
        batch_prioritized_routing=True,
        router_ignore_padding_tokens=True,
        router_bias=True,
        renormalize_top_k=True,
        capacity_factor_eval=1.0,
        dispatch="gather",
    ),
    "expert_choice": dict(encoder_router="experts_choose", capacity_factor_eval=1.5),
    "dropless": dict(dispatch="gather", dropless=True, router_ignore_padding_tokens=True),
}


@pytest.mark.parametrize("case", sorted(NAIVE_CASES))
def test_block_matches_naive_per_token_loop(case):
    cfg = block_config(**NAIVE_CASES[case])
    x, mask = inputs(pad=True)
    block, params = init(cfg, x, mask)
    if cfg.moe.router_bias:  # a non-zero bias, so that it matters
        params["router"]["bias"] = jnp.linspace(-0.5, 0.5, cfg.moe.num_experts)
    y, state = apply_fn(block)(params, x, mask)
    ref = naive_block(cfg, params, x, mask)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)
    metrics = collect_moe_metrics(state["moe_metrics"])
    if case in ("switch_drops", "gated_everything"):
        assert float(metrics["fraction_dropped"]) > 0  # the case does exercise dropping
    if case == "dropless":
        assert float(metrics["fraction_dropped"]) == 0


# --- dispatch paths agree ---------------------------------------------------------


def _loss_and_grads(cfg, params, x, mask):
    block = MoeBlock(cfg, decoder=False)

    def loss(params, x):
        y = block.apply({"params": params}, x, padding_mask=mask, enable_dropout=False)
        return jnp.sum(jnp.sin(y))

    value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    return value, grads


@pytest.mark.parametrize(
    "capacity_factor,paths", [(4.0, ("einsum", "gather", "dropless")), (0.75, ("einsum", "gather"))]
)
def test_dispatch_paths_agree_forward_and_gradients(capacity_factor, paths):
    x, mask = inputs()
    results = {}
    for path in paths:
        cfg = block_config(
            capacity_factor_eval=capacity_factor,
            dispatch="einsum" if path == "einsum" else "gather",
            dropless=path == "dropless",
        )
        if path == paths[0]:
            _, params = init(cfg, x, mask)
        results[path] = _loss_and_grads(cfg, params, x, mask)
    ref_value, ref_grads = results[paths[0]]
    for path in paths[1:]:
        value, grads = results[path]
        np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
        for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


# --- expert parallelism ------------------------------------------------------------


@pytest.mark.parametrize("dispatch", ["einsum", "gather"])
def test_expert_parallel_mesh_equals_one_device(dispatch):
    from flan_moe import partitioning

    cfg = block_config(num_experts=8, dispatch=dispatch, max_group_size=8, num_groups_multiple=8)
    x, mask = inputs(b=8, length=8)
    block, params = init(cfg, x, mask)
    f = apply_fn(block, jit=False)
    y_ref, state_ref = jax.jit(f)(params, x, mask)

    mesh = partitioning.make_mesh(data=2, expert=4, model=1)
    with partitioning.axis_rules(mesh):
        abstract = jax.eval_shape(
            lambda: block.init(jax.random.PRNGKey(0), x, padding_mask=mask, enable_dropout=False)
        )
        shardings = partitioning.params_shardings(abstract["params"], mesh)
        sharded = jax.device_put(params, shardings)
        xs = jax.device_put(x, partitioning.batch_sharding(mesh))
        ms = jax.device_put(mask, partitioning.batch_sharding(mesh))
        compiled = jax.jit(f).lower(sharded, xs, ms).compile()
        y, state = compiled(sharded, xs, ms)
        hlo = compiled.as_text()
    assert sharded["experts"]["wo"].sharding.spec[0] == "expert"
    assert "all-to-all" in hlo  # tokens really move between expert shards
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-5, atol=1e-6)
    got, ref = (
        collect_router_losses(state["moe_losses"]),
        collect_router_losses(state_ref["moe_losses"]),
    )
    np.testing.assert_allclose(
        float(got["load_balancing_loss"]), float(ref["load_balancing_loss"]), rtol=1e-5
    )
    got, ref = (
        collect_moe_metrics(state["moe_metrics"]),
        collect_moe_metrics(state_ref["moe_metrics"]),
    )
    np.testing.assert_allclose(
        np.asarray(got["expert_usage"]), np.asarray(ref["expert_usage"]), rtol=1e-5
    )


# --- options ---------------------------------------------------------------------


def test_parameter_names_axes_and_freeze_regexes():
    cfg = block_config(num_shared_experts=1, extra_dense_mlp=True, router_bias=True)
    x, mask = inputs()
    block = MoeBlock(cfg, decoder=False)
    boxed = jax.eval_shape(
        lambda: block.init(jax.random.PRNGKey(0), x, padding_mask=mask, enable_dropout=False)
    )["params"]
    specs = traverse_util.flatten_dict(nn.get_partition_spec(boxed), sep="/")
    assert specs["router/kernel"] == jax.sharding.PartitionSpec("embed", "unmodeled")
    assert specs["experts/wi_0"] == jax.sharding.PartitionSpec("expert", "embed", "expert_mlp")
    assert specs["experts/wo"] == jax.sharding.PartitionSpec("expert", "expert_mlp", "embed")
    names = ["encoder/layers_1/moe/" + n for n in specs]
    gate = [n for n in names if re.search("/router/", n)]
    experts = [n for n in names if re.search("/(experts|shared_experts)/", n)]
    assert sorted(gate) == sorted(f"encoder/layers_1/moe/router/{n}" for n in ("kernel", "bias"))
    assert len(experts) == 6 and not any("extra_mlp" in n or "router" in n for n in experts)
    shapes = jax.tree_util.tree_map(jnp.shape, nn.unbox(boxed))
    assert shapes["experts"]["wi_0"] == (4, 32, 64)
    assert shapes["shared_experts"]["wi_0"] == (32, 64)
    assert shapes["extra_mlp"]["wi_0"] == (32, 64)


def test_router_init_and_float32_routing_under_bfloat16():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 32)).astype(jnp.bfloat16)
    router = routing.RouterWeights(64)
    variables = jax.jit(lambda: router.init(jax.random.PRNGKey(0), x, enable_dropout=False))()
    kernel = np.asarray(nn.unbox(variables["params"])["kernel"])
    assert kernel.dtype == np.float32 and abs(kernel.std() - 0.02) < 0.002
    logits = router.apply(nn.unbox(variables), x, enable_dropout=False)
    assert logits.dtype == jnp.float32
    ref = np.asarray(x, np.float32) @ kernel  # the bfloat16 inputs, exactly, in float32
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-6)

    cfg = block_config(dtype="bfloat16")
    block, params = init(cfg, x, None)
    y, _ = apply_fn(block)(params, x, None)
    assert y.dtype == jnp.bfloat16 and y.shape == x.shape


def test_losses_are_sown_whatever_the_coefficients_and_expert_choice_sows_zero_balancing():
    # A run's LossConfig may turn on a loss the model config leaves at 0: the layers
    # always sow both (flaxformer's routers always compute them).
    x, mask = inputs()
    cfg = block_config(aux_loss_coef=0.0, router_z_loss_coef=0.0)
    block, params = init(cfg, x, mask)
    _, state = apply_fn(block)(params, x, mask)
    assert set(state["moe_losses"]) == {"load_balancing_loss", "router_z_loss"}
    losses = collect_router_losses(state["moe_losses"])
    assert float(losses["load_balancing_loss"]) > 0 and float(losses["router_z_loss"]) > 0

    cfg = block_config(encoder_router="experts_choose", router_z_loss_coef=0.001)
    block, params = init(cfg, x, mask)
    _, state = apply_fn(block)(params, x, mask)
    assert float(state["moe_losses"]["load_balancing_loss"]) == 0.0
    assert float(state["moe_losses"]["router_z_loss"]) > 0


def test_expert_choice_in_decoder_is_an_error():
    with pytest.raises(ValueError, match="not allowed in the decoder"):
        MoeConfig(decoder_router="experts_choose")
    with pytest.raises(ValueError, match="dropless"):
        MoeConfig(dispatch="einsum", dropless=True)


def test_train_and_eval_capacity_factors_and_jitter():
    x, mask = inputs()
    cfg = block_config(
        num_selected_experts=1, capacity_factor_train=0.5, capacity_factor_eval=4.0,
        router_jitter_noise=0.1,
    )  # fmt: skip
    block, params = init(cfg, x, mask)
    _, eval_state = apply_fn(block)(params, x, mask)
    train = apply_fn(block, enable_dropout=True)
    y1, train_state = train(params, x, mask, jax.random.PRNGKey(1))
    y1_again, _ = train(params, x, mask, jax.random.PRNGKey(1))
    y2, _ = train(params, x, mask, jax.random.PRNGKey(2))
    assert float(collect_moe_metrics(eval_state["moe_metrics"])["fraction_dropped"]) == 0.0
    assert float(collect_moe_metrics(train_state["moe_metrics"])["fraction_dropped"]) > 0.3
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y1_again))  # same rng, same noise
    assert not np.allclose(np.asarray(y1), np.asarray(y2))  # jitter drawn from 'dropout'
    with pytest.raises(Exception, match="dropout"):
        block.apply({"params": params}, x, padding_mask=mask, enable_dropout=True)


def test_decoder_uses_tokens_choose_in_expert_choice_model():
    cfg = get_config("ec_tiny", dtype="float32")
    x, mask = inputs()
    block, params = init(cfg, x, mask, decoder=True)
    y, state = apply_fn(block)(params, x, mask)
    assert "load_balancing_loss" in state["moe_losses"]  # top-2 tokens choose
    ref = naive_block(cfg, params, x, mask, decoder=True)
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-4, atol=1e-5)


def test_stale_sown_values_are_overwritten_not_mixed():
    x, mask = inputs()
    block, params = init(block_config(), x, mask)
    _, fresh = apply_fn(block)(params, x, mask)
    stale = {"params": params, "moe_losses": {"load_balancing_loss": jnp.float32(123.0)}}
    _, state = jax.jit(
        lambda v: block.apply(v, x, padding_mask=mask, enable_dropout=False, mutable=MUTABLE)
    )(stale)
    np.testing.assert_allclose(
        float(collect_router_losses(state["moe_losses"])["load_balancing_loss"]),
        float(collect_router_losses(fresh["moe_losses"])["load_balancing_loss"]),
        rtol=1e-6,
    )


def test_expert_dropout_only_in_training():
    x, mask = inputs()
    cfg = block_config(expert_dropout_rate=0.5, capacity_factor_train=4.0, capacity_factor_eval=4.0)
    block, params = init(cfg, x, mask)
    y_eval, _ = apply_fn(block)(params, x, mask)
    np.testing.assert_allclose(
        np.asarray(y_eval), naive_block(cfg, params, x, mask), rtol=1e-4, atol=1e-5
    )
    train = apply_fn(block, enable_dropout=True)
    y1, _ = train(params, x, mask, jax.random.PRNGKey(1))
    y2, _ = train(params, x, mask, jax.random.PRNGKey(2))
    assert not np.allclose(np.asarray(y1), np.asarray(y_eval), atol=1e-3)
    assert not np.allclose(np.asarray(y1), np.asarray(y2), atol=1e-3)
