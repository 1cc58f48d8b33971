"""The training loss around the Flax encoder-decoder (t5x's ``BaseModel.loss_fn`` idea).

Total loss of one batch (all sums run over target tokens with weight w > 0)::

    loss = (sum_t w_t * CE_t + z_loss * sum_t w_t * logsumexp(logits_t)^2) / N
         + aux_loss_coef * load_balancing_loss + router_z_loss_coef * router_z_loss

where ``N`` is the number of real target tokens of the WHOLE batch (t5x's
``NUM_REAL_TARGET_TOKENS``): with packing, every packed example's real tokens count;
padding never does. ``CE_t`` is the (optionally label-smoothed) cross-entropy of
token t. The router losses come unweighted from the sparse layers (collection
``moe_losses``) and are combined by ``flan_moe.model.moe.collect_router_losses``.

For gradient accumulation the caller passes ``loss_normalizer`` (N of the full
batch) and ``num_microbatches``; the microbatch losses then sum to the full-batch
loss, so the summed gradients equal the full-batch gradient.

Legend: b batch, l target length, v vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from flan_moe.model.config import ModelConfig
from flan_moe.model.transformer import EncoderDecoder

Array = jax.Array
Batch = dict[str, Array]

MODEL_INPUT_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


@dataclass(frozen=True)
class LossConfig:
    """How the training loss is built.

    ``aux_loss_coef`` / ``router_z_loss_coef`` of None take the model's
    ``MoeConfig`` values (paper: aux 0.01, router z 0.001 for ST-MoE).
    """

    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    aux_loss_coef: float | None = None
    router_z_loss_coef: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.z_loss < 0:
            raise ValueError(f"z_loss must be >= 0, got {self.z_loss}")

    def router_coefficients(self, config: ModelConfig) -> tuple[float, float]:
        """(aux, router z) coefficients: explicit values, else the model's MoE config."""
        moe = config.moe
        aux = self.aux_loss_coef
        rz = self.router_z_loss_coef
        if aux is None:
            aux = moe.aux_loss_coef if moe is not None else 0.0
        if rz is None:
            rz = moe.router_z_loss_coef if moe is not None else 0.0
        return float(aux), float(rz)


def cross_entropy_with_z_loss(
    logits: Array, targets: Array, *, label_smoothing: float = 0.0
) -> tuple[Array, Array]:
    """Per-token cross-entropy and squared log-partition (the output z-loss term).

    logits [b, l, v] float32, targets [b, l] int -> (ce [b, l], logz_squared [b, l]).
    With label smoothing the target distribution puts ``1 - s`` on the target and
    ``s / (v - 1)`` on every other id; its entropy is subtracted so a perfect
    prediction of the smoothed distribution costs 0 (as in Mesh TensorFlow / t5x).
    """
    logits = logits.astype(jnp.float32)
    vocab = logits.shape[-1]
    log_z = jax.nn.logsumexp(logits, axis=-1)
    log_probs = logits - log_z[..., None]
    target_log_prob = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
    if label_smoothing == 0.0:
        ce = -target_log_prob
    else:
        on = 1.0 - label_smoothing
        off = label_smoothing / (vocab - 1)
        mean_others = (jnp.sum(log_probs, axis=-1) - target_log_prob) * off
        entropy = -(on * jnp.log(on) + (vocab - 1) * off * jnp.log(off))
        ce = -(on * target_log_prob + mean_others) - entropy
    return ce, jnp.square(log_z)


def loss_weights(batch: Batch) -> Array:
    """Per-target-token weights: ``decoder_loss_weights`` if given, else targets > 0."""
    if "decoder_loss_weights" in batch:
        return batch["decoder_loss_weights"].astype(jnp.float32)
    return (batch["decoder_target_tokens"] > 0).astype(jnp.float32)


def model_inputs(batch: Batch) -> dict[str, Array]:
    """The features of a batch that ``EncoderDecoder.__call__`` takes."""
    missing = [k for k in MODEL_INPUT_FEATURES[:3] if k not in batch]
    if missing:
        raise KeyError(
            f"batch lacks features {missing}; a training batch needs encoder_input_tokens, "
            f"decoder_input_tokens and decoder_target_tokens (got {sorted(batch)})"
        )
    return {k: batch[k] for k in MODEL_INPUT_FEATURES if k in batch}


def _collect_moe(config: ModelConfig, state: dict[str, Any]) -> tuple[dict, dict]:
    if not config.is_moe:
        return {}, {}
    from flan_moe.model.layer_stack import scanned_to_unrolled
    from flan_moe.model.moe import collect_moe_metrics, collect_router_losses

    def per_layer(tree: Any) -> Any:
        # Scanned layers sow [num_blocks] values: name them per layer as unrolled ones.
        return scanned_to_unrolled(tree, config) if config.scan_layers else tree

    losses = collect_router_losses(
        per_layer(state.get("moe_losses", {})),
        combination=config.moe.router_loss_combination,
    )
    metrics = collect_moe_metrics(per_layer(state.get("moe_metrics", {})))
    return dict(losses), dict(metrics)


def loss_fn(
    params: Any,
    batch: Batch,
    *,
    model: EncoderDecoder,
    loss_config: LossConfig,
    dropout_rng: Array | None = None,
    enable_dropout: bool = False,
    loss_normalizer: Array | float | None = None,
    num_microbatches: int = 1,
) -> tuple[Array, dict[str, Array]]:
    """The scalar training loss and its parts for one (micro)batch.

    Returns ``(loss, parts)``. ``parts`` holds SUMS over this batch's tokens
    (``cross_entropy_sum``, ``z_loss_sum``, ``correct_sum``, ``weight_sum``) and
    per-batch means of the router terms and MoE metrics (``load_balancing_loss``,
    ``router_z_loss``, ``moe/...``), so callers can add them over microbatches.
    """
    config = model.config
    rngs = {"dropout": dropout_rng} if enable_dropout and dropout_rng is not None else {}
    if enable_dropout and not rngs and config.dropout_rate > 0:
        raise ValueError("enable_dropout=True needs a dropout_rng")
    logits, state = model.apply(
        {"params": params},
        **model_inputs(batch),
        enable_dropout=enable_dropout,
        rngs=rngs,
        mutable=["moe_losses", "moe_metrics"],
    )
    targets = batch["decoder_target_tokens"]
    weights = loss_weights(batch)
    ce, logz_sq = cross_entropy_with_z_loss(
        logits, targets, label_smoothing=loss_config.label_smoothing
    )
    weight_sum = jnp.sum(weights)
    normalizer = weight_sum if loss_normalizer is None else loss_normalizer
    normalizer = jnp.maximum(jnp.asarray(normalizer, jnp.float32), 1.0)
    ce_sum = jnp.sum(ce * weights)
    z_sum = jnp.sum(logz_sq * weights)
    loss = (ce_sum + loss_config.z_loss * z_sum) / normalizer

    parts: dict[str, Array] = {
        "cross_entropy_sum": ce_sum,
        "z_loss_sum": loss_config.z_loss * z_sum,
        "correct_sum": jnp.sum((jnp.argmax(logits, axis=-1) == targets) * weights),
        "weight_sum": weight_sum,
    }
    router_losses, moe_metrics = _collect_moe(config, state)
    if router_losses:
        aux_coef, rz_coef = loss_config.router_coefficients(config)
        lb = router_losses["load_balancing_loss"]
        rz = router_losses["router_z_loss"]
        loss = loss + (aux_coef * lb + rz_coef * rz) / num_microbatches
        parts["load_balancing_loss"] = lb
        parts["router_z_loss"] = rz
        for name, value in router_losses.items():
            if name not in ("load_balancing_loss", "router_z_loss"):
                parts[f"router/{name}"] = jnp.asarray(value, jnp.float32)
    for name, value in moe_metrics.items():
        parts[f"moe/{name}"] = jnp.asarray(value, jnp.float32)
    return loss, parts


def summarize_parts(parts: dict[str, Array], *, num_microbatches: int = 1) -> dict[str, Array]:
    """Per-token metrics from (microbatch-summed) loss parts.

    ``loss`` here is recomputed from the parts: cross-entropy + z-loss per real
    token; router terms are reported beside it, averaged over microbatches.
    """
    n = jnp.maximum(parts["weight_sum"], 1.0)
    out = {
        "cross_entropy": parts["cross_entropy_sum"] / n,
        "z_loss": parts["z_loss_sum"] / n,
        "accuracy": parts["correct_sum"] / n,
        "num_real_target_tokens": parts["weight_sum"],
    }
    for name, value in parts.items():
        if name.endswith("_sum"):
            continue
        out[name] = value / num_microbatches
    return out
