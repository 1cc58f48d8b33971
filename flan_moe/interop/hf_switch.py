"""Hugging Face ``SwitchTransformersForConditionalGeneration`` -> this project's params.

Extends the T5 converter (``flan_moe.interop.hf_t5``): attention, norms, relative
position tables and the LM head are converted there; this module adds the feed-forward
sublayers of a Switch checkpoint and the ``MoeConfig``.

Hugging Face layout -> ours (HF ``nn.Linear`` stores [out, in]):

* dense layer ``{ff}.mlp.wi/wo.weight`` -> ``mlp/wi`` [d, f], ``mlp/wo`` [f, d];
* sparse layer ``{ff}.mlp.router.classifier.weight`` [e, d] (+ ``.bias``) ->
  ``moe/router/kernel`` [d, e] (+ ``moe/router/bias``);
  ``{ff}.mlp.experts.expert_{j}.wi/wo.weight`` -> ``moe/experts/wi`` [e, d, f] and
  ``moe/experts/wo`` [e, f, d] (stacked on the expert axis).

Semantics matched (transformers >= the fix of issue 48293, PR 48421, e.g. 5.23.0):

* sparse placement: with ``step = num_layers // num_sparse_layers``, layer ``i`` is
  sparse iff ``i % step == 1`` (every layer when step is 1): MoeConfig
  ``sparse_interval=step, sparse_offset=1``; we write the explicit layer tuples so
  encoder and decoder may differ;
* routing: top-1, each sequence is one group (``route_per_sequence``) with a fixed
  ``expert_capacity`` per expert (``capacity_factor=0, min_expert_capacity=C``), slots
  claimed in sequence order; a dropped token passes through the residual only;
* padding tokens are routed like any other (HF never uses its
  ``router_ignore_padding_tokens`` flag), and count in the router losses; HF's padded
  encoder positions attend to the real tokens (its mask hides keys only) and its decoder
  masks causally only (no ``decoder_attention_mask``), so the converted config sets
  ``mask_padded_queries=False`` (t5x masks padded positions): the padded positions'
  hidden states, hence both stacks' router losses, then equal HF's with padded inputs;
* experts use the model's dropout rate (HF's expert MLP is its dense MLP).

HF computes a stack's aux loss on the router logits of all its sparse layers
concatenated along the sequence, i.e. from f and P pooled over the layers: the converted
config sets ``load_balancing_pooling="stack"``, which does the same, so both router
losses equal HF's for any number of sparse layers (the project's own sizes default to
the per-layer mean of t5x/flaxformer). HF also reports both losses as 0 when a stack's
step is 1 (every layer sparse); we do not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flan_moe.interop.hf_t5 import (
    Params,
    StateDict,
    config_from_hf_t5,
    hf_config_value,
    hf_tensor,
    mlp_params,
    params_from_hf_t5,
    read_hf_folder,
)
from flan_moe.model.config import ModelConfig, MoeConfig


def _sparse_step(hf_config: Any, *, decoder: bool) -> int:
    """HF's ``encoder_sparse_step`` / ``decoder_sparse_step`` (computed as HF does)."""
    key = "decoder_sparse_step" if decoder else "encoder_sparse_step"
    step = hf_config_value(hf_config, key)
    if step is not None:
        return int(step)
    num_layers = int(hf_config_value(hf_config, "num_layers", 12))
    if decoder:
        num_layers = int(hf_config_value(hf_config, "num_decoder_layers", None) or num_layers)
    num_sparse = int(
        hf_config_value(
            hf_config, "num_sparse_decoder_layers" if decoder else "num_sparse_encoder_layers", 3
        )
    )
    return num_layers // num_sparse if num_sparse > 0 else num_layers


def _sparse_layers(num_layers: int, step: int) -> tuple[int, ...]:
    if step <= 0:
        return ()
    return tuple(i for i in range(num_layers) if step == 1 or i % step == 1)


def config_from_hf_switch(hf_config: Any, **overrides: Any) -> ModelConfig:
    """A ModelConfig (with MoeConfig) equal to a Hugging Face SwitchTransformersConfig.

    Accepts the config object or its ``config.json`` dict; ``overrides`` replace
    ModelConfig fields (e.g. ``dtype="float32"``).
    """
    act = hf_config_value(hf_config, "dense_act_fn", "relu")
    if act != "relu":
        raise ValueError(
            f"unsupported Switch dense_act_fn {act!r}: Hugging Face's Switch MLP is "
            "ungated, and this project supports ungated MLPs with 'relu' only"
        )
    base = config_from_hf_t5(hf_config, mlp_activation="relu")
    capacity = int(hf_config_value(hf_config, "expert_capacity", 64))
    moe = MoeConfig(
        num_experts=int(hf_config_value(hf_config, "num_experts", 8)),
        num_selected_experts=1,
        capacity_factor_train=0.0,
        capacity_factor_eval=0.0,
        min_expert_capacity=capacity,
        route_per_sequence=True,
        load_balancing_pooling="stack",
        # Hugging Face's conventions (WORKSPACE.md "MoE conventions"): per-sequence
        # groups, HF's aux-loss normalisation, encoder + decoder losses summed.
        capacity_formula="times_k",
        group_count="max_group_size",
        load_balancing_normalization="per_choice",
        router_loss_combination="sum_of_stack_means",
        dispatch="einsum",
        router_jitter_noise=float(hf_config_value(hf_config, "router_jitter_noise", 0.0)),
        router_bias=bool(hf_config_value(hf_config, "router_bias", False)),
        router_ignore_padding_tokens=False,
        aux_loss_coef=float(hf_config_value(hf_config, "router_aux_loss_coef", 0.001)),
        router_z_loss_coef=float(hf_config_value(hf_config, "router_z_loss_coef", 0.001)),
        expert_dropout_rate=base.dropout_rate,
        encoder_sparse_layers=_sparse_layers(
            base.num_encoder_layers, _sparse_step(hf_config, decoder=False)
        ),
        decoder_sparse_layers=_sparse_layers(
            base.num_decoder_layers, _sparse_step(hf_config, decoder=True)
        ),
    )
    name = str(hf_config_value(hf_config, "_name_or_path", "") or "hf_switch")
    return base.replace(**{"name": name, "moe": moe, **overrides})


def _switch_feed_forward(config: ModelConfig):
    moe = config.moe
    e, d, f = moe.num_experts, config.d_model, config.d_ff

    def convert(sd: StateDict, prefix: str, layer: int, decoder: bool) -> tuple[str, Params]:
        if not moe.is_sparse(layer, decoder=decoder):
            return "mlp", mlp_params(sd, f"{prefix}.mlp", config)
        p = f"{prefix}.mlp"
        router: Params = {"kernel": hf_tensor(sd, f"{p}.router.classifier.weight", (e, d)).T}
        if moe.router_bias:
            router["bias"] = hf_tensor(sd, f"{p}.router.classifier.bias", (e,))
        wi = [hf_tensor(sd, f"{p}.experts.expert_{j}.wi.weight", (f, d)).T for j in range(e)]
        wo = [hf_tensor(sd, f"{p}.experts.expert_{j}.wo.weight", (d, f)).T for j in range(e)]
        experts = {"wi": np.stack(wi), "wo": np.stack(wo)}
        return "moe", {"router": router, "experts": experts}

    return convert


def params_from_hf_switch(state_dict: StateDict, config: ModelConfig) -> Params:
    """Convert a Switch state dict (numpy arrays) into this model's params.

    ``config`` must come from ``config_from_hf_switch`` (its sparse layer tuples decide
    which HF layers are read as routers + experts).
    """
    if config.moe is None:
        raise ValueError("params_from_hf_switch needs a config with moe (config_from_hf_switch)")
    return params_from_hf_t5(state_dict, config, feed_forward=_switch_feed_forward(config))


def load_hf_switch(path: str, **config_overrides: Any) -> tuple[Params, ModelConfig]:
    """Params and ModelConfig from a local HF Switch folder (``save_pretrained`` output)."""
    hf_config, state = read_hf_folder(path)
    config = config_from_hf_switch(hf_config, **config_overrides)
    return params_from_hf_switch(state, config), config
