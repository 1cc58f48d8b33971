"""Per-neuron importance of a dense FFN on data: LLaMA-MoE's |h * dL/dh| (lineage.md §2).

For each dense MLP (``{stack}/layers_{i}/mlp``), hidden unit j and data group c::

    v_c[j] = sum over the group's real tokens t of |h_tj * dL/dh_tj|  /  #tokens

where h is the input of the output projection wo (act(x wi_0) * (x wi_1), or act(x wi))
and L the batch's mean cross-entropy over real target tokens (llama-moe
``importance_type=feature_change``, ``kernel=l1_norm``). Encoder layers count encoder
tokens, decoder layers target tokens.

How dL/dh is obtained without touching the model: a zero perturbation ``delta`` is added
to every dense MLP's output through ``flax.linen.intercept_methods``; dL/dy = dL/d delta,
and since y = h wo, dL/dh = dL/dy wo^T. The MLP input x is captured on the way and h is
recomputed from x and the layer's kernels (float32, no dropout).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flan_moe.construction.recipes import ConstructionError
from flan_moe.model.config import ModelConfig
from flan_moe.model.layers import MlpBlock, activation
from flan_moe.model.transformer import EncoderDecoder

Batch = Mapping[
    str, np.ndarray
]  # encoder_input_tokens, decoder_input_tokens, decoder_target_tokens


def dense_layer_names(config: ModelConfig) -> list[str]:
    """'encoder/layers_0', ... for every dense-MLP layer of ``config``."""
    names = []
    for stack, count in (
        ("encoder", config.num_encoder_layers),
        ("decoder", config.num_decoder_layers),
    ):
        for i in range(count):
            if config.moe is None or not config.moe.is_sparse(i, decoder=stack == "decoder"):
                names.append(f"{stack}/layers_{i}")
    return names


def run_with_mlp_hooks(
    config: ModelConfig,
    params: Any,
    batch: Batch,
    deltas: Mapping[str, jax.Array] | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(logits, {layer: MLP input x [b, l, d]}) of one forward pass; ``deltas[layer]`` is
    added to that layer's dense MLP output."""
    captured: dict[str, jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if not isinstance(module, MlpBlock) or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        path = "/".join(module.path)
        if not path.endswith("/mlp"):  # shared experts / extra MLPs inside a MoE block
            return next_fun(*args, **kwargs)
        layer = path.removesuffix("/mlp")
        captured[layer] = args[0]
        y = next_fun(*args, **kwargs)
        return y + deltas[layer] if deltas and layer in deltas else y

    model = EncoderDecoder(config)
    with nn.intercept_methods(interceptor):
        logits = model.apply(
            {"params": params},
            jnp.asarray(batch["encoder_input_tokens"]),
            jnp.asarray(batch["decoder_input_tokens"]),
            jnp.asarray(batch["decoder_target_tokens"]),
            enable_dropout=False,
        )
    return logits, captured


def _hidden(config: ModelConfig, mlp: Mapping[str, jax.Array], x: jax.Array) -> jax.Array:
    act, gated = activation(config.mlp_activation)
    if gated:
        return act(x @ mlp["wi_0"]) * (x @ mlp["wi_1"])
    return act(x @ mlp["wi"])


def _layer_params(params: Any, layer: str) -> Mapping[str, jax.Array]:
    stack, name = layer.split("/")
    return params[stack][name]["mlp"]


@functools.partial(jax.jit, static_argnums=0)
def _score_sums(config: ModelConfig, params: Any, batch: Mapping[str, jax.Array]) -> dict:
    enc, targets = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    layers = dense_layer_names(config)
    deltas = {
        name: jnp.zeros(
            (*(enc.shape if name.startswith("encoder") else targets.shape), config.d_model)
        )
        for name in layers
    }
    weights = (targets > 0).astype(jnp.float32)

    def loss(deltas):
        logits, captured = run_with_mlp_hooks(config, params, batch, deltas)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0), captured

    grads, captured = jax.grad(loss, has_aux=True)(deltas)
    out = {}
    for name in layers:
        mlp = _layer_params(params, name)
        valid = ((enc if name.startswith("encoder") else targets) > 0).astype(jnp.float32)
        h = _hidden(config, mlp, captured[name])
        dh = grads[name] @ mlp["wo"].T
        out[name] = (jnp.einsum("blf,bl->f", jnp.abs(h * dh), valid), jnp.sum(valid))
    return out


def batch_scores(
    config: ModelConfig, params: Any, batch: Batch
) -> dict[str, tuple[np.ndarray, int]]:
    """{layer: (sum over real tokens of |h * dL/dh| [d_ff], #real tokens)} for one batch."""
    config = config.replace(dtype="float32", dropout_rate=0.0)
    batch = {
        k: jnp.asarray(batch[k], jnp.int32)
        for k in ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")
    }
    sums = _score_sums(config, params, batch)
    return {k: (np.asarray(v, np.float64), int(n)) for k, (v, n) in sums.items()}


def importance_scores(
    config: ModelConfig, params: Any, groups: Sequence[Sequence[Batch]]
) -> dict[str, np.ndarray]:
    """{layer: scores [len(groups), d_ff]}: one importance vector per data group (one
    group per routed expert for the Sharing splits)."""
    if not groups or any(len(g) == 0 for g in groups):
        raise ConstructionError("importance needs at least one batch in every data group")
    totals: dict[str, np.ndarray] = {}
    for c, group in enumerate(groups):
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, int] = {}
        for batch in group:
            for name, (score, count) in batch_scores(config, params, batch).items():
                sums[name] = sums.get(name, 0.0) + score
                counts[name] = counts.get(name, 0) + count
        for name, score in sums.items():
            if counts[name] == 0:
                raise ConstructionError(f"data group {c} has no real tokens for {name}")
            totals.setdefault(name, np.zeros((len(groups), score.size)))[c] = score / counts[name]
    return totals
