"""The sparse Mixture-of-Experts feed-forward block and the collection of its losses.

Einsum / shape legend:
  b batch, l length, d embed (d_model), f expert hidden size (expert_mlp),
  g group, s token within a group, e expert, c capacity slot, k a token's choice,
  n routed assignments (dropless).

Flow of ``MoeBlock`` (tokens [b, l, d] -> [b, l, d]), one named piece per step:

1. group (``routing.group_tokens``): flatten batch and length and split into g groups
   of s tokens (``routing.group_count``), with their validity mask;
2. route (float32): router logits [g, s, e] (``routing.RouterWeights``) -> the layer's
   router choice and capacity (``routing.route``) -> a ``Routing``;
   record: ``layer_losses`` (unweighted load-balancing / z losses) and
   ``routing.routing_metrics`` are sown (``MoeBlock._sow_losses_and_metrics``);
3. dispatch -> expert compute -> combine (``MoeBlock._dispatch_and_combine``), by one of
   three paths:
   * ``dispatch="einsum"``: one-hot dispatch and combine tensors [g, s, e, c]
     (``dispatch.einsum_dispatch`` / ``einsum_combine``), the t5x/flaxformer form;
   * ``dispatch="gather"``: tokens move into the [g, e, c, d] expert buffers by a
     gather with the router's precomputed ``slot_token`` indices, and back by
     gathering each token's k slots (``dispatch.gather_dispatch`` / ``gather_combine``);
   * ``dropless=True`` (gather only, ``MoeBlock._dropless``): each group's choices are
     sorted by expert within the group and run through grouped matmuls batched over
     groups (``flan_moe.model.dropless``); no capacity, nothing dropped.
   The experts (``ExpertMlp``) are one batched matmul over the stacked expert weights
   [e, d, f] (``ExpertMlp.ragged`` for dropless);
4. add the DeepSeekMoE shared experts and the ST-MoE extra dense MLP, if configured
   (``MoeBlock._add_dense_mlps``).

Each piece has its own tests (``tests/model/test_moe_pieces.py``); the param tree and
fixed-input outputs are pinned (``tests/model/test_moe_pins.py``).

Expert parallelism (einsum and gather paths): buffers are constrained to
('expert_group', ...) before and after, and to ('expert', 'expert_replicas', ...)
around the expert matmuls; with an ``expert`` mesh axis the partitioner turns the
change of layout into all-to-alls. The dropless path sorts within groups (no global
sort, no all-gather of tokens) and has no buffers to exchange: under an expert mesh
axis the partitioner gathers the expert weights instead (use it with experts replicated).

Losses and metrics are sown unweighted (each call overwrites its values);
``collect_router_losses`` and ``collect_moe_metrics`` turn the collections into named
arrays. Combination (``MoeConfig.router_loss_combination``): by default each loss is
the mean over all sparse layers of the model (t5x ``MoeEncoderDecoderModel``);
"sum_of_stack_means" averages each stack's layers and sums the stacks, as Hugging Face
Switch sums its encoder and decoder losses (with ``load_balancing_pooling="stack"``
HF's pooled aux loss exactly). Both losses are sown whatever the coefficients (as
flaxformer's routers always compute them). The model loss is
CE + aux_loss_coef * load_balancing_loss + router_z_loss_coef * router_z_loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from flan_moe.model import dispatch as dispatch_lib
from flan_moe.model import dropless as dropless_lib
from flan_moe.model import routing as routing_lib
from flan_moe.model.config import ModelConfig, MoeConfig
from flan_moe.model.layers import MlpBlock, activation, constrain, dtype_of

Array = jax.Array

LOSS_COLLECTION = "moe_losses"
METRICS_COLLECTION = "moe_metrics"
# Opt-in per-token routing (``flan_moe.analysis``): sown only when ``apply`` is called with
# this collection mutable, so training, evaluation and the param tree never see it.
ROUTING_COLLECTION = "moe_routing"
LOSS_NAMES = ("load_balancing_loss", "router_z_loss")
# Sown per layer when MoeConfig.load_balancing_pooling == "stack" (see collect_router_losses).
POOLING_STATISTICS = (
    "load_balancing_choices",
    "load_balancing_prob_sums",
    "load_balancing_token_counts",
)


class ExpertMlp(nn.Module):
    """``num_experts`` MLPs with weights stacked on a leading expert axis.

    wi_0, wi_1 (gated) or wi: [e, d, f], logical axes ('expert', 'embed', 'expert_mlp');
    wo: [e, f, d], ('expert', 'expert_mlp', 'embed'). Each expert is initialised like a
    dense T5 MLP (fan-in scaling over its own input dimension).
    """

    config: ModelConfig
    num_experts: int
    d_ff: int
    dropout_rate: float

    def setup(self) -> None:
        cfg = self.config
        pdtype = dtype_of(cfg.param_dtype)
        init = nn.initializers.variance_scaling(
            cfg.init_scale, "fan_in", "normal", in_axis=-2, out_axis=-1, batch_axis=(0,)
        )
        e, d, f = self.num_experts, cfg.d_model, self.d_ff
        in_axes = ("expert", "embed", "expert_mlp")
        _, self.gated = activation(cfg.mlp_activation)

        def param(name: str, shape: tuple[int, ...], axes: tuple[str, ...]) -> Array:
            return self.param(name, nn.with_logical_partitioning(init, axes), shape, pdtype)

        if self.gated:
            self.wi_0 = param("wi_0", (e, d, f), in_axes)
            self.wi_1 = param("wi_1", (e, d, f), in_axes)
        else:
            self.wi = param("wi", (e, d, f), in_axes)
        self.wo = param("wo", (e, f, d), ("expert", "expert_mlp", "embed"))

    def _dropout(self, h: Array, enable_dropout: bool) -> Array:
        """Inverted dropout on the expert hidden units (the 'dropout' RNG stream)."""
        if enable_dropout and self.dropout_rate > 0:
            keep = 1.0 - self.dropout_rate
            mask = jax.random.bernoulli(self.make_rng("dropout"), keep, h.shape)
            return jnp.where(mask, h / keep, 0).astype(h.dtype)
        return h

    def __call__(self, x: Array, *, enable_dropout: bool) -> Array:
        """Expert buffers [e, g, c, d] -> [e, g, c, d] (one batched matmul per weight)."""
        dtype = dtype_of(self.config.dtype)
        act, _ = activation(self.config.mlp_activation)
        hidden_axes = ("expert", "expert_replicas", "unmodeled", "expert_mlp")
        if self.gated:
            gate = jnp.einsum("egcd,edf->egcf", x, self.wi_0.astype(dtype))
            lin = jnp.einsum("egcd,edf->egcf", x, self.wi_1.astype(dtype))
            h = act(gate) * lin
        else:
            h = act(jnp.einsum("egcd,edf->egcf", x, self.wi.astype(dtype)))
        h = self._dropout(constrain(h, hidden_axes), enable_dropout)
        y = jnp.einsum("egcf,efd->egcd", h, self.wo.astype(dtype))
        return constrain(y, ("expert", "expert_replicas", "unmodeled", "embed"))

    def ragged(self, x: Array, group_sizes: Array, *, enable_dropout: bool) -> Array:
        """Rows [n, d] sorted by expert, ``group_sizes`` [e] -> [n, d] (grouped matmuls);
        or per routing group: rows [g, n, d], ``group_sizes`` [g, e] (``flan_moe.model.dropless``).

        Rows past ``sum(group_sizes)`` belong to no expert and come out as zeros.
        """
        dtype = dtype_of(self.config.dtype)
        act, _ = activation(self.config.mlp_activation)

        def dot(lhs: Array, rhs: Array) -> Array:
            return dropless_lib.grouped_dot(lhs, rhs.astype(dtype), group_sizes)

        if self.gated:
            h = act(dot(x, self.wi_0)) * dot(x, self.wi_1)
        else:
            h = act(dot(x, self.wi))
        h = self._dropout(h, enable_dropout)
        return dot(h, self.wo)


class MoeBlock(nn.Module):
    """Sparse feed-forward block: router + experts (+ shared experts, + extra dense MLP).

    ``__call__(x [b, l, d], *, padding_mask [b, l] bool | None, enable_dropout)`` returns
    [b, l, d] in ``config.dtype``. ``enable_dropout`` also means "training": it selects
    the train capacity factor and turns on router jitter and expert dropout.
    Parameters: ``router/kernel`` [d, e] (+ ``router/bias``), ``experts/{wi_0,wi_1,wo}``
    or ``experts/{wi,wo}``, ``shared_experts/...``, ``extra_mlp/...``.
    """

    config: ModelConfig
    decoder: bool

    @nn.compact
    def __call__(self, x: Array, *, padding_mask: Array | None, enable_dropout: bool) -> Array:
        moe = self._moe()
        dtype = dtype_of(self.config.dtype)
        x = x.astype(dtype)
        with jax.named_scope("route"):
            xg, valid = routing_lib.group_tokens(moe, x, padding_mask)
            xg = constrain(xg, ("expert_group", "unmodeled", "embed"))
            logits = self._router()(xg, enable_dropout=enable_dropout)
            probs = jax.nn.softmax(logits, axis=-1)
            routing = routing_lib.route(
                moe, probs, valid, decoder=self.decoder, train=enable_dropout
            )
            self._sow_losses_and_metrics(moe, logits, probs, routing, valid)
            self._sow_routing(probs, routing, x.shape[:2])
        y = self._dispatch_and_combine(xg, routing, enable_dropout).reshape(x.shape)
        y = self._add_dense_mlps(y, x, enable_dropout)
        return constrain(y.astype(dtype), ("batch", "length", "embed"))

    def _moe(self) -> MoeConfig:
        if self.config.moe is None:
            raise ValueError("MoeBlock needs config.moe (a MoeConfig); got None")
        return self.config.moe

    def _router(self) -> routing_lib.RouterWeights:
        moe = self._moe()
        return routing_lib.RouterWeights(
            moe.num_experts,
            use_bias=moe.router_bias,
            jitter_noise=moe.router_jitter_noise,
            param_dtype=self.config.param_dtype,
            name="router",
        )

    def _dispatch_and_combine(
        self, xg: Array, routing: routing_lib.Routing, enable_dropout: bool
    ) -> Array:
        """Groups [g, s, d] -> expert outputs combined per token [g, s, d], by the path
        the config picks (dropless, einsum or gather)."""
        moe = self._moe()
        if moe.dropless:
            return self._dropless(xg, routing, enable_dropout)
        if moe.dispatch == "einsum":
            return self._einsum_path(xg, routing, enable_dropout)
        return self._gather_path(xg, routing, enable_dropout)

    def _add_dense_mlps(self, y: Array, x: Array, enable_dropout: bool) -> Array:
        """y + the DeepSeekMoE shared experts and the ST-MoE extra dense MLP of x, if any."""
        cfg, moe = self.config, self._moe()
        if moe.num_shared_experts > 0:
            # N shared experts of width f == one MLP of width N * f (hidden units concatenate).
            y = y + MlpBlock(
                cfg,
                d_ff=moe.num_shared_experts * moe.expert_d_ff(cfg.d_ff),
                dropout_rate=moe.expert_dropout_rate,
                name="shared_experts",
            )(x, enable_dropout=enable_dropout)
        if moe.extra_dense_mlp:
            y = y + MlpBlock(cfg, name="extra_mlp")(x, enable_dropout=enable_dropout)
        return y

    # --- losses and metrics -------------------------------------------------------

    def _sow_routing(
        self, probs: Array, routing: routing_lib.Routing, rows: tuple[int, int]
    ) -> None:
        """Per-token router probabilities [b, l, e] and kept assignments [b, l, e] (bool),
        only when the caller made ``ROUTING_COLLECTION`` mutable (off by default)."""
        if self.is_initializing() or not self.is_mutable_collection(ROUTING_COLLECTION):
            return
        e = probs.shape[-1]
        kept = jnp.einsum(
            "gsk,gske->gse",
            routing.kept.astype(jnp.float32),
            jax.nn.one_hot(routing.expert_index, e),
        )
        for name, value in (("router_probs", probs), ("kept", kept > 0)):
            self._sow(ROUTING_COLLECTION, name, value.reshape(*rows, e))

    def _sow(self, collection: str, name: str, value: Array) -> None:
        # Overwrite, not append: stale values (e.g. from ``init``) never mix in.
        self.sow(collection, name, value, init_fn=lambda: 0.0, reduce_fn=lambda _, v: v)

    def _sow_losses_and_metrics(
        self,
        moe: MoeConfig,
        logits: Array,
        probs: Array,
        routing: routing_lib.Routing,
        valid: Array | None,
    ) -> None:
        """Sow ``layer_losses`` into ``moe_losses`` and, when that collection is mutable,
        ``routing_lib.routing_metrics`` into ``moe_metrics``."""
        for name, value in layer_losses(
            moe, logits, probs, routing, valid, decoder=self.decoder
        ).items():
            self._sow(LOSS_COLLECTION, name, value)
        if self.is_mutable_collection(METRICS_COLLECTION):
            tokens_choose = moe.router_type(decoder=self.decoder) == "tokens_choose"
            metrics = routing_lib.routing_metrics(
                jax.lax.stop_gradient(probs),
                jax.tree_util.tree_map(jax.lax.stop_gradient, routing),
                valid,
                tokens_choose_k=moe.num_selected(decoder=self.decoder) if tokens_choose else None,
            )
            for name, value in metrics.items():
                self._sow(METRICS_COLLECTION, name, value)

    # --- dispatch paths -------------------------------------------------------------

    def _experts(self, d_ff: int) -> ExpertMlp:
        moe = self.config.moe
        return ExpertMlp(
            self.config, moe.num_experts, d_ff, moe.expert_dropout_rate, name="experts"
        )

    def _run_experts(self, buffers: Array, enable_dropout: bool) -> Array:
        """[g, e, c, d] buffers -> expert outputs [g, e, c, d] (all-to-all when sharded)."""
        buffers = constrain(buffers, ("expert_group", "unmodeled", None, "embed"))
        with jax.named_scope("expert_compute"):
            x = buffers.transpose(1, 0, 2, 3)  # [e, g, c, d]
            x = constrain(x, ("expert", "expert_replicas", "unmodeled", "embed"))
            experts = self._experts(self.config.moe.expert_d_ff(self.config.d_ff))
            y = experts(x, enable_dropout=enable_dropout)
            y = y.transpose(1, 0, 2, 3)  # [g, e, c, d]
        return constrain(y, ("expert_group", "unmodeled", None, "embed"))

    def _einsum_path(self, xg: Array, routing: routing_lib.Routing, enable_dropout: bool) -> Array:
        with jax.named_scope("dispatch"):
            buffers, combine = dispatch_lib.einsum_dispatch(xg, routing, self._moe().num_experts)
        y = self._run_experts(buffers, enable_dropout)
        with jax.named_scope("combine"):
            return dispatch_lib.einsum_combine(y, combine)

    def _gather_path(self, xg: Array, routing: routing_lib.Routing, enable_dropout: bool) -> Array:
        with jax.named_scope("dispatch"):
            buffers = dispatch_lib.gather_dispatch(xg, routing)
        y = self._run_experts(buffers, enable_dropout)  # [g, e, c, d]
        with jax.named_scope("combine"):
            return dispatch_lib.gather_combine(y, routing)

    def _dropless(self, xg: Array, routing: routing_lib.Routing, enable_dropout: bool) -> Array:
        experts = self._experts(self.config.moe.expert_d_ff(self.config.d_ff))
        return dropless_lib.dropless_dispatch(
            xg, routing.expert_index, routing.kept, routing.weight,
            num_experts=self.config.moe.num_experts,
            experts=lambda rows, sizes: experts.ragged(rows, sizes, enable_dropout=enable_dropout),
        )  # fmt: skip


def layer_losses(
    moe: MoeConfig,
    logits: Array,
    probs: Array,
    routing: routing_lib.Routing,
    valid: Array | None,
    *,
    decoder: bool,
) -> dict[str, Array]:
    """The unweighted losses one sparse layer sows into ``LOSS_COLLECTION``.

    Both losses always (as flaxformer's routers always compute them), so a run's
    coefficient can turn on a loss the model config leaves at 0. Expert choice is
    balanced by construction: its load-balancing loss is 0, and it counts in the mean
    over layers (flaxformer ExpertsChooseMaskedRouter). With
    ``load_balancing_pooling="stack"`` also the ``POOLING_STATISTICS`` of tokens-choose
    layers, for ``collect_router_losses`` to pool.
    """
    out = {"load_balancing_loss": jnp.zeros((), jnp.float32)}
    if moe.router_type(decoder=decoder) == "tokens_choose":
        stats = routing_lib.load_balancing_statistics(
            probs, routing.expert_index, valid, normalization=moe.load_balancing_normalization
        )
        out["load_balancing_loss"] = routing_lib.load_balancing_from_statistics(*stats)
        if moe.load_balancing_pooling == "stack":
            out.update(zip(POOLING_STATISTICS, stats))
    out["router_z_loss"] = routing_lib.router_z_loss(logits, valid)
    return out


# --- Collecting the sown values ------------------------------------------------------


def _flat_sown(collection: Mapping, name: str) -> dict[tuple[str, ...], Array]:
    """{path of the owning layer (without the block name): value} for a sown name."""
    if LOSS_COLLECTION in collection or METRICS_COLLECTION in collection:
        raise ValueError(
            "pass the collection itself (e.g. state['moe_losses']), not the whole mutated "
            "variables dict"
        )
    out = {}
    for path, value in traverse_util.flatten_dict(dict(collection)).items():
        if path[-1] != name:
            continue
        values = value if isinstance(value, tuple) else (value,)
        module_path = tuple(p for p in path[:-2] if p)  # drop the MoeBlock's own name
        # MoeBlock overwrites its sown values (one array); a tuple comes from other
        # sow settings: average the calls.
        out[module_path] = jnp.mean(jnp.stack([jnp.asarray(v) for v in values]), axis=0)
    return out


def _stack_of(path: tuple[str, ...]) -> str:
    for part in path:
        if part in ("encoder", "decoder"):
            return part
    return "model"


def collect_router_losses(
    moe_losses: Mapping[str, Any], *, combination: str = "mean_over_layers"
) -> dict[str, Array]:
    """Unweighted router losses from the ``moe_losses`` collection of ``model.apply``.

    Returns, for each sown loss name (``load_balancing_loss``, ``router_z_loss``):
    per layer ``"encoder/layers_1/load_balancing_loss"``, per stack (mean over that
    stack's sparse layers, or its pooled loss) ``"encoder/load_balancing_loss"``, and
    the total ``"load_balancing_loss"`` by ``combination`` (``MoeConfig.
    router_loss_combination``): "mean_over_layers" = mean over every sparse layer of
    the model (t5x contrib/moe/models.py ``_extract_diversity_metrics``);
    "sum_of_stack_means" = sum of the stack values (Hugging Face Switch). A loss no
    layer sowed is 0.0 in the total.
    """
    if combination not in ("mean_over_layers", "sum_of_stack_means"):
        raise ValueError(
            f"combination must be 'mean_over_layers' or 'sum_of_stack_means', got {combination!r}"
        )
    out: dict[str, Array] = {}
    for name in LOSS_NAMES:
        per_layer = _flat_sown(moe_losses, name)
        stacks: dict[str, list[Array]] = {}
        for path, value in sorted(per_layer.items()):
            out["/".join((*path, name))] = value
            stacks.setdefault(_stack_of(path), []).append(value)
        pooled = _pooled_load_balancing(moe_losses) if name == "load_balancing_loss" else {}
        total = jnp.zeros((), jnp.float32)
        for stack, values in stacks.items():
            value = pooled.get(stack, jnp.mean(jnp.stack(values)))
            out[f"{stack}/{name}"] = value
            total = total + value
        if combination == "mean_over_layers" and per_layer:
            total = jnp.mean(jnp.stack(list(per_layer.values())))
        out[name] = total
    return out


def _pooled_load_balancing(moe_losses: Mapping[str, Any]) -> dict[str, Array]:
    """Per stack, the load-balancing loss of its layers' statistics added together.

    Layers that sowed statistics (``load_balancing_pooling="stack"``) route the same
    groups, so a group's expert choices, probabilities and token counts add up over
    the layers before E * sum_e f_e * P_e is taken (Hugging Face Switch's loss).
    """
    sums: dict[str, list[Array]] = {}
    per_stat = [_flat_sown(moe_losses, stat) for stat in POOLING_STATISTICS]
    for path in per_stat[0]:
        stack = _stack_of(path)
        values = [stat[path] for stat in per_stat]
        sums[stack] = values if stack not in sums else [a + b for a, b in zip(sums[stack], values)]
    return {
        stack: routing_lib.load_balancing_from_statistics(*values) for stack, values in sums.items()
    }


def collect_moe_metrics(moe_metrics: Mapping[str, Any]) -> dict[str, Array]:
    """Routing statistics from the ``moe_metrics`` collection of ``model.apply``.

    Per layer ``"encoder/layers_1/fraction_dropped"`` etc., and the mean over all sparse
    layers under the bare name (``"fraction_dropped"``, ``"router_confidence"``,
    ``"router_entropy"``, ``"expert_usage"`` [e] when all layers have the same e), plus
    ``"expert_usage_max"``: the largest expert share, averaged over layers (1/e is
    perfectly balanced).
    """
    out: dict[str, Array] = {}
    names = ("fraction_dropped", "expert_usage", "router_confidence", "router_entropy")
    for name in names:
        per_layer = _flat_sown(moe_metrics, name)
        for path, value in sorted(per_layer.items()):
            out["/".join((*path, name))] = value
        values = list(per_layer.values())
        if not values or len({v.shape for v in values}) != 1:
            continue
        out[name] = jnp.mean(jnp.stack(values), axis=0)
        if name == "expert_usage":
            out["expert_usage_max"] = jnp.mean(jnp.stack([jnp.max(v) for v in values]))
    return out
