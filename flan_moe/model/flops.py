"""Parameter counts and FLOPs per token of any ``ModelConfig``, counted analytically.

Conventions:

* ``total_params``: every parameter of ``EncoderDecoder`` (the tests check this against
  the real parameter tree and against hand counts);
* ``active_params``: the parameters one token position uses: everything except the
  routed experts it is not sent to. A tokens-choose layer uses k experts; an
  expert-choice layer uses ``capacity_factor_train`` experts per token on average.
  Shared experts and the extra dense MLP are always active.
* FLOPs: forward-pass multiply-adds x 2 of the matmuls (projections, MLPs / experts,
  router, LM head, and the attention score and value products over the given
  lengths); the embedding lookup, norms, softmax and MoE dispatch data movement are
  not counted. A training step costs about 3x the forward FLOPs.
"""

from __future__ import annotations

from dataclasses import dataclass

from flan_moe.model.config import ModelConfig
from flan_moe.model.layers import activation


@dataclass(frozen=True)
class ModelCost:
    total_params: int
    active_params: float
    # Forward FLOPs of one encoder (input) token and one decoder (target) token.
    encoder_flops_per_token: float
    decoder_flops_per_token: float
    input_length: int
    target_length: int

    @property
    def flops_per_example(self) -> float:
        """Forward FLOPs of one (input_length, target_length) example."""
        return (
            self.input_length * self.encoder_flops_per_token
            + self.target_length * self.decoder_flops_per_token
        )

    @property
    def train_flops_per_example(self) -> float:
        """Forward + backward (about 3x forward)."""
        return 3.0 * self.flops_per_example


def _mlp_params(config: ModelConfig, d_ff: int) -> int:
    _, gated = activation(config.mlp_activation)
    return (3 if gated else 2) * config.d_model * d_ff


def _feed_forward(config: ModelConfig, layer: int, *, decoder: bool) -> tuple[int, float]:
    """(total params, active params) of one layer's feed-forward sublayer."""
    moe = config.moe
    if moe is None or not moe.is_sparse(layer, decoder=decoder):
        dense = _mlp_params(config, config.d_ff)
        return dense, float(dense)
    e = moe.num_experts
    expert = _mlp_params(config, moe.expert_d_ff(config.d_ff))
    router = config.d_model * e + (e if moe.router_bias else 0)
    always = router + moe.num_shared_experts * expert
    if moe.extra_dense_mlp:
        always += _mlp_params(config, config.d_ff)
    if moe.router_type(decoder=decoder) == "experts_choose":
        used: float = moe.capacity_factor_train * moe.expert_granularity
    else:
        used = moe.num_selected(decoder=decoder)
    return always + e * expert, always + used * expert


def model_cost(
    config: ModelConfig, *, input_length: int = 512, target_length: int = 128
) -> ModelCost:
    """Total / active parameters and forward FLOPs per token of ``config``.

    Attention FLOPs assume full (unpacked) rows of the given lengths; the decoder's
    causal self-attention is counted over the whole target length, as a dense masked
    matmul computes it.
    """
    d, hx = config.d_model, config.num_heads * config.head_dim
    attention = 4 * d * hx
    norm = d
    relpos = config.relative_attention_num_buckets * config.num_heads
    embedding = config.vocab_size * d
    head = 0 if config.tie_embeddings else embedding

    total = embedding + head + 2 * (relpos + norm)  # + final norms
    active = float(total)
    enc_matmul = 0.0
    for i in range(config.num_encoder_layers):
        ff_total, ff_active = _feed_forward(config, i, decoder=False)
        total += attention + 2 * norm + ff_total
        active += attention + 2 * norm + ff_active
        enc_matmul += attention + ff_active
    dec_matmul = float(embedding)  # the LM head (tied or not) is a [d, v] matmul
    for i in range(config.num_decoder_layers):
        ff_total, ff_active = _feed_forward(config, i, decoder=True)
        total += 2 * attention + 3 * norm + ff_total
        active += 2 * attention + 3 * norm + ff_active
        dec_matmul += 2 * attention + ff_active

    # Scores (q.k) and weighted values (p.v): 2 * 2 * hx FLOPs per key position.
    enc_attention = config.num_encoder_layers * 4 * hx * input_length
    dec_attention = config.num_decoder_layers * 4 * hx * (target_length + input_length)
    return ModelCost(
        total_params=int(total),
        active_params=active,
        encoder_flops_per_token=2 * enc_matmul + enc_attention,
        decoder_flops_per_token=2 * dec_matmul + dec_attention,
        input_length=input_length,
        target_length=target_length,
    )


def format_cost(config: ModelConfig, cost: ModelCost) -> str:
    """One human-readable line, e.g. for a size table."""
    return (
        f"{config.name}: {cost.total_params / 1e6:,.1f}M params, "
        f"{cost.active_params / 1e6:,.1f}M active, "
        f"{cost.encoder_flops_per_token / 1e9:.2f} / {cost.decoder_flops_per_token / 1e9:.2f} "
        f"GFLOPs per encoder / decoder token ({cost.input_length}/{cost.target_length})"
    )
