"""Our params -> a Hugging Face folder (``config.json`` + ``model.safetensors`` +
``spiece.model``) that ``transformers`` loads as T5ForConditionalGeneration (dense) or
SwitchTransformersForConditionalGeneration (MoE), with equal float32 logits.

The inverse of ``hf_t5.params_from_hf_t5`` / ``hf_switch.params_from_hf_switch`` (same
layout table). An untied head is written as ``lm_head.weight`` with
``tie_word_embeddings=False``: transformers 5.23 then keeps the two matrices apart (it
unties when both are present and differ) and does not scale the decoder output.

Only models whose semantics Hugging Face can express are exported: a Switch export needs
top-1 tokens-choose routing per sequence with a fixed expert capacity and HF's sparse
layer placement (what ``config_from_hf_switch`` produces); anything else (t5x-style
groups and capacity factors, top-2, expert choice) is refused with the differing fields
named, since HF would compute different logits.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

from flan_moe.interop.hf_t5 import Params
from flan_moe.model.config import ModelConfig

_PROJ = {"gated-gelu": "gated-gelu", "gated-silu": "gated-silu", "relu": "relu"}


def _np(x: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x, dtype=np.float32))


def _attention(sd: dict, prefix: str, p: Params) -> None:
    d, h, x = np.shape(p["query"])
    for ours, hf in (("query", "q"), ("key", "k"), ("value", "v")):
        sd[f"{prefix}.{hf}.weight"] = _np(p[ours]).reshape(d, h * x).T
    sd[f"{prefix}.o.weight"] = _np(p["out"]).reshape(h * x, d).T


def _mlp(sd: dict, prefix: str, p: Params) -> None:
    for name, value in p.items():
        sd[f"{prefix}.{name}.weight"] = _np(value).T


def _feed_forward(sd: dict, prefix: str, layer: Params, config: ModelConfig) -> None:
    mlp = f"{prefix}.mlp" if config.moe is not None else f"{prefix}.DenseReluDense"
    if "mlp" in layer:
        _mlp(sd, mlp, layer["mlp"])
        return
    moe = layer["moe"]
    sd[f"{mlp}.router.classifier.weight"] = _np(moe["router"]["kernel"]).T
    if "bias" in moe["router"]:
        sd[f"{mlp}.router.classifier.bias"] = _np(moe["router"]["bias"])
    for name in ("wi", "wo"):
        for j, w in enumerate(_np(moe["experts"][name])):
            sd[f"{mlp}.experts.expert_{j}.{name}.weight"] = np.ascontiguousarray(w.T)


def hf_state_dict(params: Params, config: ModelConfig) -> dict[str, np.ndarray]:
    """Our params as a Hugging Face T5 / Switch state dict (float32 numpy, [out, in])."""
    sd: dict[str, np.ndarray] = {"shared.weight": _np(params["token_embedder"]["embedding"])}
    for stack, n, ff in (
        ("encoder", config.num_encoder_layers, 1),
        ("decoder", config.num_decoder_layers, 2),
    ):
        tree = params[stack]
        sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = _np(
            tree["relpos_bias"]["rel_embedding"]
        )
        sd[f"{stack}.final_layer_norm.weight"] = _np(tree[f"{stack}_norm"]["scale"])
        for i in range(n):
            layer, p = tree[f"layers_{i}"], f"{stack}.block.{i}.layer"
            if stack == "encoder":
                norms = {"pre_attention_layer_norm": 0, "pre_mlp_layer_norm": 1}
                _attention(sd, f"{p}.0.SelfAttention", layer["attention"])
            else:
                norms = {
                    "pre_self_attention_layer_norm": 0,
                    "pre_cross_attention_layer_norm": 1,
                    "pre_mlp_layer_norm": 2,
                }
                _attention(sd, f"{p}.0.SelfAttention", layer["self_attention"])
                _attention(sd, f"{p}.1.EncDecAttention", layer["encoder_decoder_attention"])
            for name, index in norms.items():
                sd[f"{p}.{index}.layer_norm.weight"] = _np(layer[name]["scale"])
            _feed_forward(sd, f"{p}.{ff}", layer, config)
    if not config.tie_embeddings:
        sd["lm_head.weight"] = np.ascontiguousarray(_np(params["decoder"]["logits_dense"]).T)
    return sd


def _switch_step(sparse: tuple[int, ...], num_layers: int, stack: str) -> int:
    """HF's sparse step whose placement (``i % step == 1``, all when 1) equals ``sparse``."""
    for step in range(1, num_layers + 1):
        if tuple(i for i in range(num_layers) if step == 1 or i % step == 1) == tuple(sparse):
            return step
    raise ValueError(
        f"{stack} sparse layers {sparse} are not a Hugging Face Switch placement "
        "(layer i sparse iff i % step == 1): this model cannot be exported to HF Switch"
    )


def _switch_fields(config: ModelConfig, allow_routing_differences: bool) -> dict[str, Any]:
    moe = config.moe
    wanted = dict(
        num_selected_experts=1,
        capacity_factor_eval=0.0,
        route_per_sequence=True,
        load_balancing_pooling="stack",
        router_ignore_padding_tokens=False,
    )
    differing = {k: getattr(moe, k, None) for k, v in wanted.items() if getattr(moe, k, v) != v}
    if moe.router_type(decoder=False) != "tokens_choose":
        differing["router_type"] = moe.router_type(decoder=False)
    if differing and not allow_routing_differences:
        raise ValueError(
            f"MoE fields {differing} differ from Hugging Face Switch routing ({wanted}): "
            "transformers would compute other logits. Export with "
            "allow_routing_differences=True (--allow_routing_differences) to write it anyway."
        )
    return dict(
        num_experts=moe.num_experts,
        expert_capacity=moe.min_expert_capacity,
        router_bias=moe.router_bias,
        router_jitter_noise=moe.router_jitter_noise,
        router_aux_loss_coef=moe.aux_loss_coef,
        router_z_loss_coef=moe.router_z_loss_coef,
        router_ignore_padding_tokens=moe.router_ignore_padding_tokens,
        num_sparse_encoder_layers=len(moe_layers(config, decoder=False)),
        num_sparse_decoder_layers=len(moe_layers(config, decoder=True)),
        encoder_sparse_step=_switch_step(
            moe_layers(config, decoder=False), config.num_encoder_layers, "encoder"
        ),
        decoder_sparse_step=_switch_step(
            moe_layers(config, decoder=True), config.num_decoder_layers, "decoder"
        ),
        dense_act_fn="relu",
    )


def moe_layers(config: ModelConfig, *, decoder: bool) -> tuple[int, ...]:
    n = config.num_decoder_layers if decoder else config.num_encoder_layers
    return tuple(i for i in range(n) if config.moe.is_sparse(i, decoder=decoder))


def hf_config_dict(config: ModelConfig, *, allow_routing_differences: bool = False) -> dict:
    """``config.json`` of the exported model."""
    values: dict[str, Any] = dict(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.head_dim,
        d_ff=config.d_ff,
        num_layers=config.num_encoder_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        dropout_rate=config.dropout_rate,
        layer_norm_epsilon=config.layer_norm_epsilon,
        tie_word_embeddings=config.tie_embeddings,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        torch_dtype="float32",
        is_encoder_decoder=True,
    )
    if config.moe is None:
        values.update(
            model_type="t5",
            architectures=["T5ForConditionalGeneration"],
            feed_forward_proj=_PROJ[config.mlp_activation],
        )
    else:
        if config.mlp_activation != "relu":
            raise ValueError(
                f"HF Switch has an ungated relu MLP; this model uses {config.mlp_activation!r}"
            )
        values.update(
            model_type="switch_transformers",
            architectures=["SwitchTransformersForConditionalGeneration"],
            **_switch_fields(config, allow_routing_differences),
        )
    return values


def export_hf(
    params: Params,
    config: ModelConfig,
    out_dir: str,
    *,
    sentencepiece_model: str | None = None,
    allow_routing_differences: bool = False,
) -> str:
    """Write ``out_dir`` (config.json, model.safetensors, spiece.model when given)."""
    from safetensors.numpy import save_file

    hf_config = hf_config_dict(config, allow_routing_differences=allow_routing_differences)
    os.makedirs(out_dir, exist_ok=True)
    # contiguous copies: safetensors writes the raw buffer (a transposed view would be
    # written untransposed)
    tensors = {k: np.ascontiguousarray(v) for k, v in hf_state_dict(params, config).items()}
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), {"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2, sort_keys=True)
    if sentencepiece_model:
        shutil.copyfile(sentencepiece_model, os.path.join(out_dir, "spiece.model"))
    return out_dir
