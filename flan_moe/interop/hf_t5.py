"""Hugging Face ``T5ForConditionalGeneration`` weights -> this project's params.

The correctness anchor of the model: ``tests/model/test_hf_t5_parity.py`` converts
random Hugging Face T5 v1.1 and T5 1.0 models and requires equal logits.

Layout differences handled here (HF ``nn.Linear`` stores [out, in]):

* attention q/k/v ``[h*x, d]`` -> ``[d, h, x]``; o ``[d, h*x]`` -> ``[h, x, d]``;
* MLP wi / wi_0 / wi_1 ``[f, d]`` -> ``[d, f]``; wo ``[d, f]`` -> ``[f, d]``;
* one relative-attention table per stack (HF keeps it in block 0) -> ``relpos_bias``;
* ``lm_head`` ``[v, d]`` -> ``logits_dense`` ``[d, v]`` (untied models only).

Use ``load_hf_t5(path)`` on a folder with ``config.json`` and ``*.safetensors`` (or
``pytorch_model*.bin``). The config computes in float32 unless ``dtype=`` says otherwise.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from flan_moe.model.config import ModelConfig

Params = dict[str, Any]
StateDict = Mapping[str, np.ndarray]

_ACTIVATIONS = {"gated-gelu": "gated-gelu", "gated-silu": "gated-silu", "relu": "relu"}


def hf_config_value(hf_config: Any, name: str, default: Any = None) -> Any:
    """A field of an HF config object or of its config.json dict."""
    if isinstance(hf_config, Mapping):
        return hf_config.get(name, default)
    return getattr(hf_config, name, default)


def config_from_hf_t5(hf_config: Any, **overrides: Any) -> ModelConfig:
    """A ModelConfig equal to a Hugging Face T5Config (object or config.json dict).

    T5 1.0 scales the decoder output by 1/sqrt(d_model) and ties the head to the
    embedding; T5 v1.1 does neither. Transformers v5 records this as
    ``scale_decoder_outputs``; older configs as ``tie_word_embeddings``.
    """
    proj = hf_config_value(hf_config, "feed_forward_proj", "relu")
    if proj not in _ACTIVATIONS:
        raise ValueError(
            f"unsupported feed_forward_proj {proj!r}; supported: {sorted(_ACTIVATIONS)}"
        )
    tied = hf_config_value(hf_config, "scale_decoder_outputs")
    if tied is None:
        tied = hf_config_value(hf_config, "tie_word_embeddings", True)
    values = dict(
        name=str(hf_config_value(hf_config, "_name_or_path", "") or "hf_t5"),
        vocab_size=int(hf_config_value(hf_config, "vocab_size")),
        d_model=int(hf_config_value(hf_config, "d_model")),
        num_heads=int(hf_config_value(hf_config, "num_heads")),
        head_dim=int(hf_config_value(hf_config, "d_kv")),
        d_ff=int(hf_config_value(hf_config, "d_ff")),
        num_encoder_layers=int(hf_config_value(hf_config, "num_layers")),
        num_decoder_layers=int(
            hf_config_value(hf_config, "num_decoder_layers", None)
            or hf_config_value(hf_config, "num_layers")
        ),
        mlp_activation=_ACTIVATIONS[proj],
        tie_embeddings=bool(tied),
        dropout_rate=float(hf_config_value(hf_config, "dropout_rate", 0.1)),
        relative_attention_num_buckets=int(
            hf_config_value(hf_config, "relative_attention_num_buckets", 32)
        ),
        relative_attention_max_distance=int(
            hf_config_value(hf_config, "relative_attention_max_distance", 128)
        ),
        layer_norm_epsilon=float(hf_config_value(hf_config, "layer_norm_epsilon", 1e-6)),
        mask_padded_queries=False,  # HF: padded encoder positions attend to the real tokens
        dtype="float32",
    )
    values.update(overrides)
    return ModelConfig(**values)


def attention_params(sd: StateDict, prefix: str, config: ModelConfig) -> Params:
    """HF ``{prefix}.{q,k,v,o}.weight`` -> ``{query,key,value,out}``."""
    h, x, d = config.num_heads, config.head_dim, config.d_model
    return {
        "query": hf_tensor(sd, f"{prefix}.q.weight", (h * x, d)).T.reshape(d, h, x),
        "key": hf_tensor(sd, f"{prefix}.k.weight", (h * x, d)).T.reshape(d, h, x),
        "value": hf_tensor(sd, f"{prefix}.v.weight", (h * x, d)).T.reshape(d, h, x),
        "out": hf_tensor(sd, f"{prefix}.o.weight", (d, h * x)).T.reshape(h, x, d),
    }


def mlp_params(sd: StateDict, prefix: str, config: ModelConfig, d_ff: int | None = None) -> Params:
    """HF ``{prefix}.{wi|wi_0,wi_1,wo}.weight`` -> ``{wi|wi_0,wi_1,wo}`` ([in, out])."""
    d, f = config.d_model, d_ff or config.d_ff
    names = ("wi_0", "wi_1") if config.mlp_activation.startswith("gated") else ("wi",)
    out = {name: hf_tensor(sd, f"{prefix}.{name}.weight", (f, d)).T for name in names}
    out["wo"] = hf_tensor(sd, f"{prefix}.wo.weight", (d, f)).T
    return out


def norm_params(sd: StateDict, key: str, config: ModelConfig) -> Params:
    return {"scale": hf_tensor(sd, key, (config.d_model,))}


MlpConverter = Callable[[StateDict, str, int, bool], tuple[str, Params]]


def _stack_params(sd: StateDict, stack: str, config: ModelConfig) -> Params:
    """A stack's shared params: its relative position bias (held by block 0) and final norm."""
    key = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    return {
        "relpos_bias": {"rel_embedding": hf_tensor(sd, key)},
        f"{stack}_norm": norm_params(sd, f"{stack}.final_layer_norm.weight", config),
    }


def dense_mlp(config: ModelConfig) -> MlpConverter:
    """The feed-forward converter for dense T5 layers: HF ``DenseReluDense`` -> ``mlp``."""

    def convert(sd: StateDict, prefix: str, layer: int, decoder: bool) -> tuple[str, Params]:
        del layer, decoder
        return "mlp", mlp_params(sd, f"{prefix}.DenseReluDense", config)

    return convert


def params_from_hf_t5(
    state_dict: StateDict, config: ModelConfig, *, feed_forward: MlpConverter | None = None
) -> Params:
    """Convert an HF T5-family state dict (numpy arrays) into this model's params.

    ``feed_forward`` converts each layer's feed-forward sublayer (the last one of a
    block) and names it; the Switch converter passes one that emits ``moe`` blocks.
    """
    sd = {k: np.asarray(v, dtype=np.float32) for k, v in state_dict.items()}
    feed_forward = feed_forward or dense_mlp(config)
    params: Params = {"token_embedder": {"embedding": hf_tensor(sd, "shared.weight")}}

    encoder = _stack_params(sd, "encoder", config)
    for i in range(config.num_encoder_layers):
        p = f"encoder.block.{i}.layer"
        name, ff = feed_forward(sd, f"{p}.1", i, False)
        encoder[f"layers_{i}"] = {
            "pre_attention_layer_norm": norm_params(sd, f"{p}.0.layer_norm.weight", config),
            "attention": attention_params(sd, f"{p}.0.SelfAttention", config),
            "pre_mlp_layer_norm": norm_params(sd, f"{p}.1.layer_norm.weight", config),
            name: ff,
        }
    params["encoder"] = encoder

    decoder = _stack_params(sd, "decoder", config)
    for i in range(config.num_decoder_layers):
        p = f"decoder.block.{i}.layer"
        name, ff = feed_forward(sd, f"{p}.2", i, True)
        decoder[f"layers_{i}"] = {
            "pre_self_attention_layer_norm": norm_params(sd, f"{p}.0.layer_norm.weight", config),
            "self_attention": attention_params(sd, f"{p}.0.SelfAttention", config),
            "pre_cross_attention_layer_norm": norm_params(sd, f"{p}.1.layer_norm.weight", config),
            "encoder_decoder_attention": attention_params(sd, f"{p}.1.EncDecAttention", config),
            "pre_mlp_layer_norm": norm_params(sd, f"{p}.2.layer_norm.weight", config),
            name: ff,
        }
    if not config.tie_embeddings:
        # transformers v5 ties the head to ``shared`` at construction and saves no
        # ``lm_head.weight`` (v1.1 configs then say scale_decoder_outputs=False): the
        # unscaled head is the embedding itself.
        head = "lm_head.weight" if "lm_head.weight" in sd else "shared.weight"
        decoder["logits_dense"] = hf_tensor(sd, head, (config.vocab_size, config.d_model)).T
    params["decoder"] = decoder
    return params


def read_hf_folder(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """``config.json`` and all tensors of a local HF model folder: ``*.safetensors``
    (sharded or not), else ``pytorch_model*.bin`` (read with torch, weights only)."""
    config_path = os.path.join(path, "config.json")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"no config.json in {path!r}: expected a Hugging Face model folder")
    with open(config_path) as f:
        hf_config = json.load(f)
    names = sorted(os.listdir(path))
    safetensors = [n for n in names if n.endswith(".safetensors")]
    bins = [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")]
    state: dict[str, np.ndarray] = {}
    if safetensors:
        from safetensors.numpy import load_file

        for name in safetensors:
            state.update(load_file(os.path.join(path, name)))
    elif bins:
        try:
            import torch
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                f"{path!r} holds pytorch_model*.bin files: reading them needs torch "
                "(requirements-dev.txt), or re-save the model as safetensors"
            ) from e
        for name in bins:
            tensors = torch.load(os.path.join(path, name), map_location="cpu", weights_only=True)
            state.update({k: v.float().numpy() for k, v in tensors.items()})
    else:
        raise FileNotFoundError(
            f"no *.safetensors or pytorch_model*.bin files in {path!r}; save the model "
            "with `model.save_pretrained(path)`"
        )
    return hf_config, state


def load_hf_t5(path: str, **config_overrides: Any) -> tuple[Params, ModelConfig]:
    """Params and ModelConfig from a local HF T5 folder (``save_pretrained`` output)."""
    hf_config, state = read_hf_folder(path)
    config = config_from_hf_t5(hf_config, **config_overrides)
    return params_from_hf_t5(state, config), config


def hf_tensor(sd: StateDict, key: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``sd[key]`` as float32, with a clear error when it is missing or has another shape."""
    if key not in sd:
        raise KeyError(f"Hugging Face state dict has no {key!r} (is this the right model type?)")
    value = np.asarray(sd[key], dtype=np.float32)
    if shape is not None and value.shape != shape:
        raise ValueError(f"{key}: expected shape {shape}, got {value.shape}")
    return value
