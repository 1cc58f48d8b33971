"""Typed, frozen model configurations and the size table.

Every layer receives one of these dataclasses; nothing reads a global config.
Gin binds them only at the edges (``flan_moe/cli``): see ``gin_configs/models``.

Sizes follow T5 v1.1's published dimensions (Raffel et al. 2020; the t5x
``t5_1_1`` gin files) and the Switch / ST-MoE papers for the sparse models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

MlpActivation = Literal["gated-gelu", "relu", "gated-silu"]
RouterType = Literal["tokens_choose", "experts_choose"]
DispatchType = Literal["einsum", "gather"]
AttentionImplementation = Literal["xla", "cudnn"]


@dataclass(frozen=True)
class MoeConfig:
    """Sparse Mixture-of-Experts settings shared by every sparse layer of a model.

    Placement: a layer ``i`` of a stack is sparse when ``i % sparse_interval ==
    sparse_offset`` (Switch-Base: interval 2, offset 1 = every other layer, as
    Hugging Face's ``SwitchTransformers``; ST-MoE-32B: interval 4), unless an
    explicit tuple of layer indices is given for that stack.
    """

    num_experts: int = 8
    # Experts per token for tokens-choose routing (1 = Switch, 2 = GShard / ST-MoE).
    num_selected_experts: int = 1
    # Encoder router; the decoder always uses tokens-choose (expert choice would
    # see future tokens). Asking for experts_choose in the decoder is an error.
    encoder_router: RouterType = "tokens_choose"
    decoder_router: RouterType = "tokens_choose"
    # Experts per token in the decoder; None = num_selected_experts.
    # FLAN-EC uses expert choice in the encoder and top-2 in the decoder.
    decoder_num_selected_experts: int | None = None
    # Encoder only: tokens with the highest top-1 probability claim slots first.
    batch_prioritized_routing: bool = False
    # Mixtral: renormalise the top-k combine weights to sum to one.
    renormalize_top_k: bool = False
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_expert_capacity: int = 4
    max_group_size: int = 4096
    dispatch: DispatchType = "einsum"
    # Gather path only: no capacity, no dropped tokens.
    dropless: bool = False
    router_jitter_noise: float = 0.0
    router_bias: bool = False
    router_ignore_padding_tokens: bool = False
    aux_loss_coef: float = 0.01
    router_z_loss_coef: float = 0.0
    expert_dropout_rate: float = 0.0
    sparse_interval: int = 2
    sparse_offset: int = 1
    encoder_sparse_layers: tuple[int, ...] | None = None
    decoder_sparse_layers: tuple[int, ...] | None = None
    # ST-MoE: an extra dense MLP beside each sparse one.
    extra_dense_mlp: bool = False
    # DeepSeekMoE: fine-grained experts split d_ff by this factor m; each expert
    # has hidden size d_ff // m and k is multiplied by m (same active compute).
    expert_granularity: int = 1
    # DeepSeekMoE: always-active shared experts (each of the fine-grained size).
    num_shared_experts: int = 0

    def __post_init__(self) -> None:
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.decoder_router == "experts_choose":
            raise ValueError(
                "expert-choice routing is not allowed in the decoder: an expert would "
                "choose among tokens that include future positions. Use "
                "decoder_router='tokens_choose' (FLAN-EC uses top-2 tokens-choose in "
                "its decoder: decoder_num_selected_experts=2)."
            )
        k = self.num_selected_experts * self.expert_granularity
        if k > self.num_experts:
            raise ValueError(
                f"each token selects {k} experts but there are only {self.num_experts}"
            )
        if self.dropless and self.dispatch != "gather":
            raise ValueError("dropless=True needs dispatch='gather' (the einsum path has capacity)")

    def num_selected(self, *, decoder: bool) -> int:
        """Experts per token (k), after fine-grained scaling."""
        k = self.num_selected_experts
        if decoder and self.decoder_num_selected_experts is not None:
            k = self.decoder_num_selected_experts
        return k * self.expert_granularity

    def router_type(self, *, decoder: bool) -> RouterType:
        return self.decoder_router if decoder else self.encoder_router

    def is_sparse(self, layer: int, *, decoder: bool) -> bool:
        explicit = self.decoder_sparse_layers if decoder else self.encoder_sparse_layers
        if explicit is not None:
            return layer in explicit
        return layer % self.sparse_interval == self.sparse_offset % self.sparse_interval

    def expert_d_ff(self, d_ff: int) -> int:
        if d_ff % self.expert_granularity:
            raise ValueError(f"d_ff={d_ff} is not divisible by expert_granularity")
        return d_ff // self.expert_granularity


@dataclass(frozen=True)
class ModelConfig:
    """An encoder-decoder transformer as T5 / t5x define it (v1.1 by default)."""

    name: str = "custom"
    vocab_size: int = 32128
    d_model: int = 768
    num_heads: int = 12
    head_dim: int = 64
    d_ff: int = 2048
    num_encoder_layers: int = 12
    num_decoder_layers: int = 12
    mlp_activation: MlpActivation = "gated-gelu"
    # T5 1.0 ties the LM head to the embedding (and scales by d_model**-0.5).
    tie_embeddings: bool = False
    dropout_rate: float = 0.1
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention_implementation: AttentionImplementation = "xla"
    moe: MoeConfig | None = None

    def __post_init__(self) -> None:
        for field_name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be positive")

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ModelConfig:
        values = dict(values)
        moe = values.pop("moe", None)
        if moe is not None:
            moe = dict(moe)
            for key in ("encoder_sparse_layers", "decoder_sparse_layers"):
                if moe.get(key) is not None:
                    moe[key] = tuple(moe[key])
            moe = MoeConfig(**moe)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields {unknown}; known: {sorted(known)}")
        return cls(moe=moe, **values)


# --- The size table -----------------------------------------------------------
# T5 v1.1 (gated-GELU, untied head, vocab 32128); dims from the t5x t5_1_1 configs.
_T5_1_1 = dict(vocab_size=32128, head_dim=64, mlp_activation="gated-gelu", tie_embeddings=False)

SIZES: dict[str, ModelConfig] = {
    # For CPU tests and smoke runs: a byte vocabulary fits in 512 ids.
    "tiny": ModelConfig(
        name="tiny",
        vocab_size=512,
        d_model=32,
        num_heads=4,
        head_dim=8,
        d_ff=64,
        num_encoder_layers=2,
        num_decoder_layers=2,
        mlp_activation="gated-gelu",
        dropout_rate=0.0,
    ),
    "small": ModelConfig(name="small", d_model=512, num_heads=6, d_ff=1024,
                         num_encoder_layers=8, num_decoder_layers=8, **_T5_1_1),
    "base": ModelConfig(name="base", d_model=768, num_heads=12, d_ff=2048,
                        num_encoder_layers=12, num_decoder_layers=12, **_T5_1_1),
    "large": ModelConfig(name="large", d_model=1024, num_heads=16, d_ff=2816,
                         num_encoder_layers=24, num_decoder_layers=24, **_T5_1_1),
    "xl": ModelConfig(name="xl", d_model=2048, num_heads=32, d_ff=5120,
                      num_encoder_layers=24, num_decoder_layers=24, **_T5_1_1),
    "xxl": ModelConfig(name="xxl", d_model=4096, num_heads=64, d_ff=10240,
                       num_encoder_layers=24, num_decoder_layers=24, **_T5_1_1),
}  # fmt: skip


def get_config(name: str, **overrides) -> ModelConfig:
    """A named config from the size table, with optional field overrides."""
    if name not in SIZES:
        raise KeyError(f"unknown model size {name!r}; known sizes: {sorted(SIZES)}")
    config = SIZES[name]
    return config.replace(**overrides) if overrides else config
