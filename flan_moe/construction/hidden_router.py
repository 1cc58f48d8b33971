"""Router vectors from hidden-state statistics: mergekit-moe's ``gate_mode: hidden``.

mergekit (``mergekit/moe/router.py``, ``get_gate_params``): per expert, the hidden states
of its positive prompts (mean over positions for ``hidden_avg``, the last position for
``hidden``), averaged over prompts, minus the same for its negative prompts, then
L2-normalised (norm clamped at 1e-8). mergekit reads each decoder layer's residual
input; here the statistic is taken where our router looks: the sparse block's input
(the pre-MLP RMSNorm output of that layer in the dense model). Padding positions are
excluded (mergekit averages over the padded length). Decoder layers see the prompt as
decoder input too (teacher-forced, shifted right).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from flan_moe.construction.importance import run_with_mlp_hooks
from flan_moe.construction.recipes import ConstructionError
from flan_moe.model.config import ModelConfig

Prompt = Sequence[int]  # token ids (EOS included or not, as the caller tokenises)


def _batch(prompts: Sequence[Prompt]) -> dict[str, np.ndarray]:
    length = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), length), np.int32)
    for row, p in enumerate(prompts):
        tokens[row, : len(p)] = p
    decoder_inputs = np.concatenate([np.zeros_like(tokens[:, :1]), tokens[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": tokens,
        "decoder_input_tokens": decoder_inputs,
        "decoder_target_tokens": tokens,
    }


def mean_hidden_states(
    config: ModelConfig, params: Any, prompts: Sequence[Prompt], *, average: bool
) -> dict[str, np.ndarray]:
    """{layer: [d_model]}: the prompts' mean hidden state at each dense MLP's input."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ConstructionError("hidden-state routers need non-empty prompts")
    batch = _batch(prompts)
    _, captured = run_with_mlp_hooks(config.replace(dtype="float32"), params, batch)
    valid = batch["encoder_input_tokens"] > 0
    last = valid.sum(axis=1) - 1
    out = {}
    for layer, x in captured.items():
        x = np.asarray(x, np.float64)
        if average:
            per_prompt = (x * valid[..., None]).sum(1) / valid.sum(1, keepdims=True)
        else:
            per_prompt = x[np.arange(len(prompts)), last]
        out[layer] = per_prompt.mean(axis=0)
    return out


def router_vectors(
    config: ModelConfig,
    params: Any,
    positive: Sequence[Sequence[Prompt]],
    negative: Sequence[Sequence[Prompt]] = (),
    *,
    average: bool = True,
) -> dict[str, np.ndarray]:
    """{layer: [num_experts, d_model]} unit router vectors, one per expert's prompts."""
    if negative and len(negative) != len(positive):
        raise ConstructionError(
            f"{len(positive)} experts have positive prompts but {len(negative)} have negative "
            "prompts; give negative prompts for every expert or for none"
        )
    vectors: dict[str, list[np.ndarray]] = {}
    for e, prompts in enumerate(positive):
        states = mean_hidden_states(config, params, prompts, average=average)
        if negative and negative[e]:
            minus = mean_hidden_states(config, params, negative[e], average=average)
            states = {k: v - minus[k] for k, v in states.items()}
        for layer, v in states.items():
            vectors.setdefault(layer, []).append(v / max(np.linalg.norm(v), 1e-8))
    return {layer: np.stack(v).astype(np.float32) for layer, v in vectors.items()}
