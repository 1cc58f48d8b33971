"""T5X checkpoints (the paper's ``gs://t5-data/pretrained_models/t5x/...``) -> our params.

A T5X checkpoint directory ``checkpoint_<step>/`` holds a msgpack file ``checkpoint``
(``{"version": 3, "optimizer": {"target": {...params...}, "state": {...}}}``, written
with ``flax.serialization``) in which small arrays are stored inline and large ones are
replaced by a TensorStore spec dict (``{"driver": "zarr", "kvstore": {"driver": "file",
"path": "target.encoder.layers_0.attention.query.kernel"}, ...}``) whose path is
relative to the directory (t5x/checkpoints.py: ``_get_spec``, ``load_t5x_checkpoint``).
Checkpoints saved to GCS use ``{"driver": "gcs", "bucket": ...}``; they are read from the
local copy (``gsutil -m cp -r gs://... DIR``) the same way.

Parameter names are flaxformer's (the ones transformers' ``convert_t5x_checkpoint_to_pytorch``
and ``convert_switch_transformers_original_flax_checkpoint_to_pytorch`` read), mapped to
Hugging Face names here and then converted by the tested HF converters:

* ``token_embedder/embedding`` [v, d] -> ``shared.weight``;
* ``{stack}/layers_{i}/{attention|self_attention|encoder_decoder_attention}/{query,key,
  value,out}/kernel`` [d, h*x] / [h*x, d] -> ``...{q,k,v,o}.weight`` (transposed);
* ``{stack}/layers_{i}/mlp/{wi|wi_0|wi_1|wo}/kernel`` -> ``DenseReluDense`` (dense T5) or
  ``mlp`` (Switch) ``.weight`` (transposed);
* MoE: ``mlp/router/router_weights/w/kernel`` [d, e] -> ``mlp.router.classifier.weight``;
  ``mlp/expert/{wi,wo}/kernel`` [e, ...] -> ``mlp.experts.expert_{j}.{wi,wo}.weight``;
* ``{stack}/relpos_bias/rel_embedding`` [h, buckets] -> block 0's
  ``relative_attention_bias.weight`` [buckets, h];
* ``{stack}_norm/scale``, ``pre_*_layer_norm/scale`` -> the HF ``layer_norm.weight``s;
* ``decoder/logits_dense/kernel`` [d, v] -> ``lm_head.weight`` (v1.1 only).

A T5X checkpoint carries no model config: the caller gives the ModelConfig (the run's
model, or ``--model`` of ``flan_moe.cli.convert``); shapes are checked on conversion.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np

from flan_moe.interop.hf_switch import params_from_hf_switch
from flan_moe.interop.hf_t5 import Params, params_from_hf_t5
from flan_moe.model.config import ModelConfig

CHECKPOINT_FILE = "checkpoint"

_ATTENTION = {"query": "q", "key": "k", "value": "v", "out": "o"}
_ENCODER_SUBLAYERS = {"attention": "0.SelfAttention", "pre_attention_layer_norm": "0.layer_norm"}
_DECODER_SUBLAYERS = {
    "self_attention": "0.SelfAttention",
    "pre_self_attention_layer_norm": "0.layer_norm",
    "encoder_decoder_attention": "1.EncDecAttention",
    "pre_cross_attention_layer_norm": "1.layer_norm",
}


def is_t5x_checkpoint(path: str) -> bool:
    """True for a T5X ``checkpoint_<step>`` directory (or its msgpack ``checkpoint`` file)."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, CHECKPOINT_FILE))
    return os.path.basename(path) == CHECKPOINT_FILE and os.path.isfile(path)


def _is_spec(value: Any) -> bool:
    return isinstance(value, dict) and "driver" in value and ("kvstore" in value or "path" in value)


def _read_array(spec: dict, directory: str) -> np.ndarray:
    import tensorstore as ts

    spec = dict(spec)
    kvstore = dict(spec.get("kvstore") or {})
    relative = kvstore.pop("path", None) or spec.pop("path", None)
    if relative is None:
        raise ValueError(f"T5X TensorStore spec without a path: {spec}")
    spec["kvstore"] = {"driver": "file", "path": os.path.join(directory, relative)}
    spec.pop("metadata", None)  # the stored zarr metadata is authoritative
    return np.asarray(ts.open(spec, open=True).result().read().result(), dtype=np.float32)


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, dict) and not _is_spec(value):
            out.update(_flatten(value, name))
        else:
            out[name] = value
    return out


def read_t5x_checkpoint(path: str) -> dict[str, np.ndarray]:
    """The float32 params (``optimizer/target``) of a T5X checkpoint, keyed by their
    '/'-joined flaxformer names (``encoder/layers_0/attention/query/kernel``)."""
    from flax import serialization

    file = path if os.path.isfile(path) else os.path.join(path, CHECKPOINT_FILE)
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"no T5X msgpack file {file!r}: pass a T5X checkpoint_<step> directory"
        )
    with open(file, "rb") as f:
        contents = serialization.msgpack_restore(f.read())
    state = contents if contents.get("version", 0) == 0 else contents.get("optimizer", {})
    if "target" not in state:
        raise ValueError(f"{file!r} has no optimizer target (params): keys {sorted(state)}")
    directory = os.path.dirname(os.path.abspath(file))
    flat = _flatten(state["target"])
    return {
        name: _read_array(v, directory) if _is_spec(v) else np.asarray(v, dtype=np.float32)
        for name, v in flat.items()
    }


def _hf_name(name: str, moe: bool) -> list[tuple[str, Any]] | str:
    """The HF key of one flaxformer param name (see the module docstring)."""
    m = re.fullmatch(r"(encoder|decoder)/layers_(\d+)/(\w+)/(.+)", name)
    if m is None:
        return {
            "token_embedder/embedding": "shared.weight",
            "encoder/encoder_norm/scale": "encoder.final_layer_norm.weight",
            "decoder/decoder_norm/scale": "decoder.final_layer_norm.weight",
            "encoder/relpos_bias/rel_embedding": (
                "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ),
            "decoder/relpos_bias/rel_embedding": (
                "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            ),
            "decoder/logits_dense/kernel": "lm_head.weight",
        }.get(name, "")
    stack, layer, sub, rest = m.groups()
    prefix = f"{stack}.block.{layer}.layer"
    ff = "1" if stack == "encoder" else "2"
    sublayers = _ENCODER_SUBLAYERS if stack == "encoder" else _DECODER_SUBLAYERS
    if sub in sublayers and sub.endswith("layer_norm") and rest == "scale":
        return f"{prefix}.{sublayers[sub]}.weight"
    if sub in sublayers and rest.removesuffix("/kernel") in _ATTENTION:
        return f"{prefix}.{sublayers[sub]}.{_ATTENTION[rest.removesuffix('/kernel')]}.weight"
    if sub == "pre_mlp_layer_norm" and rest == "scale":
        return f"{prefix}.{ff}.layer_norm.weight"
    if sub == "mlp":
        mlp = f"{prefix}.{ff}.{'mlp' if moe else 'DenseReluDense'}"
        if rest == "router/router_weights/w/kernel":
            return f"{mlp}.router.classifier.weight"
        if rest == "router/router_weights/w/bias":
            return f"{mlp}.router.classifier.bias"
        expert = re.fullmatch(r"expert/(wi|wo)/kernel", rest)
        if expert:
            return f"{mlp}.experts.expert_{{j}}.{expert.group(1)}.weight"
        dense = re.fullmatch(r"(wi|wi_0|wi_1|wo)/kernel", rest)
        if dense:
            return f"{mlp}.{dense.group(1)}.weight"
    return ""


def hf_state_dict_from_t5x(flat: dict[str, np.ndarray], *, moe: bool) -> dict[str, np.ndarray]:
    """Flaxformer-named params -> a Hugging Face T5 (``moe=False``) or Switch state dict.

    An unknown name is an error (nothing is silently dropped)."""
    out: dict[str, np.ndarray] = {}
    unknown = []
    for name, value in flat.items():
        key = _hf_name(name, moe)
        if not key:
            unknown.append(name)
        elif "{j}" in key:  # stacked experts [e, ...] -> one [out, in] matrix per expert
            for j in range(value.shape[0]):
                out[key.format(j=j)] = value[j].T
        elif key == "shared.weight":
            out[key] = value  # [v, d] in both
        elif value.ndim == 3:  # an unreshaped attention kernel [d, h, x] / out [h, x, d]
            merged = value.reshape(-1, value.shape[-1]) if key.endswith(".o.weight") else None
            out[key] = (merged if merged is not None else value.reshape(value.shape[0], -1)).T
        elif key.endswith("relative_attention_bias.weight") or value.ndim == 2:
            out[key] = value.T  # flax [in, out] -> torch [out, in]; rel_embedding [h, b]
        else:
            out[key] = value
    if unknown:
        raise ValueError(
            f"T5X checkpoint has {len(unknown)} params this converter does not know: "
            f"{unknown[:10]}; supported are T5 / T5 v1.1 / Switch (flaxformer names)"
        )
    return out


def params_from_t5x(flat: dict[str, np.ndarray], config: ModelConfig) -> Params:
    """Our params from flaxformer-named T5X params, for the model ``config``."""
    if config.moe is not None:
        return params_from_hf_switch(hf_state_dict_from_t5x(flat, moe=True), config)
    return params_from_hf_t5(hf_state_dict_from_t5x(flat, moe=False), config)


def load_t5x(path: str, config: ModelConfig) -> Params:
    """Our params from a T5X checkpoint directory, for the model ``config``."""
    return params_from_t5x(read_t5x_checkpoint(path), config)
