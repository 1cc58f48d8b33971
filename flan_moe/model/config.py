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
# "xla": T5 attention written as einsums (default; attention dropout applies);
# "dot_product": jax.nn.dot_product_attention with T5's bias, XLA's choice of kernel;
# "cudnn": the same, forced to cuDNN's fused kernel (GPU only).
AttentionImplementation = Literal["xla", "dot_product", "cudnn"]
# Activation checkpointing per layer (see flan_moe.model.layer_stack): "none" keeps
# every activation, "full" recomputes the layer, "dots" saves only matmul outputs
# without batch dimensions (t5x / MaxText's dots_with_no_batch_dims_saveable).
RematPolicy = Literal["none", "full", "dots"]


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
    # Buffer slots per expert and group (``routing.expert_capacity``):
    #   capacity = min(max(round(capacity_factor * K * tokens_per_group / num_experts),
    #                      min_expert_capacity), tokens_per_group)
    # with K = 1 for capacity_formula="flaxformer" (moe_layers.MoeLayer: the factor
    # alone sets the slots, whatever k) and K = k for "times_k" (slots grow with the
    # choices per token). Expert choice always uses K = 1. Train factor when dropout is
    # on, eval factor otherwise. capacity_factor 0 with min_expert_capacity C gives a
    # fixed capacity C (Hugging Face).
    capacity_formula: Literal["flaxformer", "times_k"] = "flaxformer"
    capacity_factor_train: float = 1.25
    capacity_factor_eval: float = 2.0
    min_expert_capacity: int = 4
    # Tokens are routed in groups (batch and length flattened); ``routing.group_count``.
    # group_count="flaxformer" (moe_layers._num_groups): the smallest count >=
    # max(tokens // max_group_size, E * num_expert_replicas) that divides the tokens and
    # is a multiple of E * num_expert_replicas (when the tokens are not a multiple of
    # E * replicas, e.g. one decoding step, flaxformer pads; we fall back to the
    # "max_group_size" rule). "max_group_size": the smallest count >=
    # ceil(tokens / max_group_size) that divides the tokens, preferring multiples of
    # num_groups_multiple.
    group_count: Literal["flaxformer", "max_group_size"] = "flaxformer"
    max_group_size: int = 4096
    # flaxformer's num_expert_replicas: device_count // (expert x model partitions).
    num_expert_replicas: int = 1
    # "max_group_size" rule only: the number of groups is rounded up to a multiple of
    # this when the token count allows (the data x expert device count).
    num_groups_multiple: int = 1
    # Each batch row is one group (Hugging Face Switch); max_group_size is ignored.
    route_per_sequence: bool = False
    dispatch: DispatchType = "einsum"
    # Gather path only: no capacity, no dropped tokens.
    dropless: bool = False
    router_jitter_noise: float = 0.0
    router_bias: bool = False
    router_ignore_padding_tokens: bool = False
    aux_loss_coef: float = 0.01
    # Load-balancing loss E * sum_e f_e * P_e: "flaxformer" (routing._load_balancing_loss)
    # takes f_e = share of tokens with e among their top-k (sum_e f_e = k, uniform
    # routing gives k); "per_choice" divides by k (uniform gives 1; HF / DeepSeekMoE).
    load_balancing_normalization: Literal["flaxformer", "per_choice"] = "flaxformer"
    # How layer losses combine into the model's router losses: "mean_over_layers" = mean
    # over all sparse layers of the model (t5x contrib/moe/models.py
    # _extract_diversity_metrics; expert-choice layers count with aux 0);
    # "sum_of_stack_means" = encoder mean + decoder mean (Hugging Face Switch).
    router_loss_combination: Literal["mean_over_layers", "sum_of_stack_means"] = "mean_over_layers"
    # How a stack's sparse layers combine into its load-balancing loss: "layer" = the
    # mean of per-layer losses (t5x / flaxformer); "stack" = pool each group's expert
    # fractions and mean probabilities over the stack's layers, then multiply (Hugging
    # Face Switch, which concatenates the layers' router logits).
    load_balancing_pooling: Literal["layer", "stack"] = "layer"
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
    # Hidden size of each routed (and shared) expert; None = d_ff // expert_granularity.
    expert_mlp_dim: int | None = None

    def __post_init__(self) -> None:
        self._check_routing()
        self._check_loss_options()
        self._check_sizes()

    def _check_routing(self) -> None:
        """Router types, k, dispatch path and dropless fit together."""
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
        if self.dropless and self.encoder_router == "experts_choose":
            raise ValueError(
                "dropless=True needs tokens-choose routing: expert choice always has a "
                "capacity (each expert takes its top-capacity tokens). Set dropless=False."
            )
        if self.dispatch not in ("einsum", "gather"):
            raise ValueError(f"dispatch must be 'einsum' or 'gather', got {self.dispatch!r}")
        if self.encoder_router not in ("tokens_choose", "experts_choose"):
            raise ValueError(
                f"encoder_router must be 'tokens_choose' or 'experts_choose', "
                f"got {self.encoder_router!r}"
            )

    def _check_loss_options(self) -> None:
        """Load-balancing pooling and the flaxformer / Hugging Face convention switches."""
        if self.load_balancing_pooling not in ("layer", "stack"):
            raise ValueError(
                "load_balancing_pooling must be 'layer' or 'stack', "
                f"got {self.load_balancing_pooling!r}"
            )
        conventions = {
            "capacity_formula": ("flaxformer", "times_k"),
            "group_count": ("flaxformer", "max_group_size"),
            "load_balancing_normalization": ("flaxformer", "per_choice"),
            "router_loss_combination": ("mean_over_layers", "sum_of_stack_means"),
        }
        for name, allowed in conventions.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"MoeConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )
        if self.load_balancing_pooling == "stack" and (
            self.router_loss_combination != "sum_of_stack_means"
        ):
            raise ValueError(
                "load_balancing_pooling='stack' (Hugging Face's pooled aux loss) needs "
                "router_loss_combination='sum_of_stack_means'; the t5x mean over layers "
                "uses per-layer losses"
            )

    def _check_sizes(self) -> None:
        """Counts, capacities, coefficients and rates in range."""
        positive = ("num_selected_experts", "max_group_size", "num_groups_multiple")
        positive += ("num_expert_replicas",)
        positive += ("sparse_interval", "expert_granularity")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"MoeConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("capacity_factor_train", "capacity_factor_eval", "min_expert_capacity"):
            if getattr(self, name) < 0:
                raise ValueError(f"MoeConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("capacity_factor_train", "capacity_factor_eval"):
            if getattr(self, name) == 0 and self.min_expert_capacity == 0:
                raise ValueError(
                    f"{name}=0 with min_expert_capacity=0 gives experts no buffer slots; "
                    "set a positive capacity factor or min_expert_capacity"
                )
        for name in ("aux_loss_coef", "router_z_loss_coef", "router_jitter_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"MoeConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.expert_dropout_rate < 1.0:
            raise ValueError(
                f"expert_dropout_rate must be in [0, 1), got {self.expert_dropout_rate}"
            )
        if self.expert_mlp_dim is not None and self.expert_mlp_dim < 1:
            raise ValueError(f"expert_mlp_dim must be >= 1, got {self.expert_mlp_dim}")
        if self.num_shared_experts < 0:
            raise ValueError(f"num_shared_experts must be >= 0, got {self.num_shared_experts}")
        if self.decoder_num_selected_experts is not None:
            k_dec = self.decoder_num_selected_experts * self.expert_granularity
            if not 1 <= k_dec <= self.num_experts:
                raise ValueError(
                    f"the decoder selects {k_dec} experts per token; it must be between 1 "
                    f"and num_experts={self.num_experts}"
                )

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
        """Hidden size of one expert: ``expert_mlp_dim``, else d_ff / granularity."""
        if self.expert_mlp_dim is not None:
            return self.expert_mlp_dim
        if d_ff % self.expert_granularity:
            raise ValueError(
                f"d_ff={d_ff} is not divisible by expert_granularity={self.expert_granularity}; "
                "choose a granularity that divides d_ff or set expert_mlp_dim"
            )
        return d_ff // self.expert_granularity

    def capacity_factor(self, *, train: bool) -> float:
        return self.capacity_factor_train if train else self.capacity_factor_eval

    def replace(self, **changes) -> MoeConfig:
        return dataclasses.replace(self, **changes)


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
    # True (t5x/flaxformer): a padded encoder position attends to nothing, padded decoder
    # positions are masked. False (Hugging Face): padded encoder positions attend to the
    # real tokens, the decoder masks causally only (unpacked rows). Only padded positions'
    # hidden states differ, so real logits agree; router losses counting padding do not.
    mask_padded_queries: bool = True
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    attention_implementation: AttentionImplementation = "xla"
    remat_policy: RematPolicy = "none"
    # nn.scan over blocks of layers (a "layers" logical axis on every layer param):
    # compiles one block instead of every layer. Param tree: see layer_stack.py.
    scan_layers: bool = False
    # flaxformer's SCALE: multiplies the variance of the attention, MLP, expert,
    # relative-position and untied output initialisers (the MoE gin files use 0.1,
    # "small weight initialization for stability"; the embedding and router keep theirs).
    init_scale: float = 1.0
    moe: MoeConfig | None = None

    def __post_init__(self) -> None:
        for field_name in ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff"):
            if getattr(self, field_name) < 1:
                raise ValueError(f"{field_name} must be positive")
        if self.attention_implementation not in ("xla", "dot_product", "cudnn"):
            raise ValueError(
                "attention_implementation must be 'xla', 'dot_product' or 'cudnn', "
                f"got {self.attention_implementation!r}"
            )
        if self.remat_policy not in ("none", "full", "dots"):
            raise ValueError(
                f"remat_policy must be 'none', 'full' or 'dots', got {self.remat_policy!r}"
            )

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

# For CPU tests and smoke runs (``tiny`` and the sparse ``*_tiny`` sizes): a byte
# vocabulary fits in 512 ids.
_TINY = dict(
    vocab_size=512,
    d_model=32,
    num_heads=4,
    head_dim=8,
    d_ff=64,
    num_encoder_layers=2,
    num_decoder_layers=2,
    dropout_rate=0.0,
)

SIZES: dict[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny", mlp_activation="gated-gelu", **_TINY),
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


# --- Sparse sizes ---------------------------------------------------------------
# Switch (Fedus et al. 2021) on the classic T5 1.0 shapes: ReLU MLP, head tied to the
# embedding, every other layer sparse (layers 1, 3, 5, ... as Hugging Face's
# switch-base-*), top-1, capacity factor 1.25 train / 2.0 eval, aux loss 0.01, no
# z-loss. GShard (top-2), expert choice and ST-MoE use the T5 v1.1 shapes (gated
# GELU, untied head). ST-MoE: top-2 every 4th layer + an extra dense MLP, z-loss 1e-4
# (Base) / 1e-3 (32B) as flaxformer's st_moe_{base,32b}.gin (Zoph et al. 2022).
# Experts use the Flan-MoE paper's expert dropout 0.2.
_T5_1_0 = dict(vocab_size=32128, head_dim=64, mlp_activation="relu", tie_embeddings=True)
# The flaxformer-based paper sizes (and their dense twins) use the MoE gin files'
# SCALE = 0.1 initialisation (tokens_choose_base.gin, included by switch_base.gin).
_PAPER_INIT = dict(init_scale=0.1)
_T5_1_0_BASE = dict(
    d_model=768, num_heads=12, d_ff=3072, num_encoder_layers=12, num_decoder_layers=12,
    **_T5_1_0, **_PAPER_INIT,
)  # fmt: skip
_T5_1_0_LARGE = dict(
    d_model=1024, num_heads=16, d_ff=4096, num_encoder_layers=24, num_decoder_layers=24,
    **_T5_1_0, **_PAPER_INIT,
)  # fmt: skip
_T5_1_1_BASE = dict(
    d_model=768, num_heads=12, d_ff=2048, num_encoder_layers=12, num_decoder_layers=12,
    **_T5_1_1, **_PAPER_INIT,
)  # fmt: skip

_SWITCH = MoeConfig(
    num_experts=8,
    num_selected_experts=1,
    sparse_interval=2,
    sparse_offset=1,
    capacity_factor_train=1.25,
    capacity_factor_eval=2.0,
    aux_loss_coef=0.01,
    router_z_loss_coef=0.0,
    expert_dropout_rate=0.2,
    # Chosen by measurement (benchmarks/RESULTS.md, scripts/measure_dispatch.py): the
    # gather path has the fewest per-device FLOPs at every registered size (-35% vs the
    # one-hot einsum), and the fewest temp bytes except under expert choice.
    dispatch="gather",
)
# Audited against flaxformer/t5x/configs/moe (WORKSPACE.md "Paper sizes"): Switch Base
# routes groups of 8192 (switch_base.gin); top-2 encoders use batch-prioritized routing
# (tokens_choose_base.gin); ST-MoE has an extra dense MLP beside each sparse one and
# MIXED placement (every 4th layer = layers 3, 7, 11), z-loss 1e-4 at Base (st_moe_base.gin).
_SWITCH_BASE = _SWITCH.replace(max_group_size=8192)
_GSHARD = _SWITCH.replace(num_experts=32, num_selected_experts=2, batch_prioritized_routing=True)
_EXPERT_CHOICE = _SWITCH.replace(
    num_experts=32,
    encoder_router="experts_choose",
    decoder_num_selected_experts=2,
    capacity_factor_train=2.0,
    capacity_factor_eval=2.0,
)
_ST_MOE = _SWITCH.replace(
    num_experts=32, num_selected_experts=2, sparse_interval=4, sparse_offset=3,
    router_z_loss_coef=0.0001, extra_dense_mlp=True,
)  # fmt: skip

for _experts in (8, 16, 32, 64, 128, 256):
    SIZES[f"switch_base_{_experts}"] = ModelConfig(
        name=f"switch_base_{_experts}",
        moe=_SWITCH_BASE.replace(num_experts=_experts),
        **_T5_1_0_BASE,
    )
SIZES.update({
    # The dense counterparts of switch_base_* / switch_large_128 (T5 1.0 shapes).
    "switch_base_dense": ModelConfig(name="switch_base_dense", **_T5_1_0_BASE),
    "switch_large_dense": ModelConfig(name="switch_large_dense", **_T5_1_0_LARGE),
    "switch_large_128": ModelConfig(
        name="switch_large_128", moe=_SWITCH.replace(num_experts=128), **_T5_1_0_LARGE
    ),
    "gs_base": ModelConfig(name="gs_base", moe=_GSHARD, **_T5_1_1_BASE),
    "ec_base": ModelConfig(name="ec_base", moe=_EXPERT_CHOICE, **_T5_1_1_BASE),
    "st_moe_base": ModelConfig(name="st_moe_base", moe=_ST_MOE, **_T5_1_1_BASE),
    "st_moe_32b": ModelConfig(
        name="st_moe_32b", vocab_size=32128, d_model=5120, num_heads=64, head_dim=128,
        d_ff=20480, num_encoder_layers=24, num_decoder_layers=24, mlp_activation="gated-gelu",
        tie_embeddings=False, moe=_ST_MOE.replace(num_experts=64, router_z_loss_coef=0.001),
        **_PAPER_INIT,
    ),
    # Tiny variants for CPU tests and smoke runs (byte vocabulary, 2+2 layers, layer 1 sparse).
    "switch_tiny_dense": ModelConfig(name="switch_tiny_dense", mlp_activation="relu",
                                     tie_embeddings=True, **_TINY),
    "switch_tiny_8": ModelConfig(name="switch_tiny_8", mlp_activation="relu", tie_embeddings=True,
                                 moe=_SWITCH, **_TINY),
    "gs_tiny": ModelConfig(name="gs_tiny", moe=_GSHARD.replace(num_experts=8), **_TINY),
    "ec_tiny": ModelConfig(name="ec_tiny", moe=_EXPERT_CHOICE.replace(num_experts=8), **_TINY),
    "st_moe_tiny": ModelConfig(name="st_moe_tiny", moe=_ST_MOE.replace(
        num_experts=8, sparse_interval=2, sparse_offset=1), **_TINY),
})  # fmt: skip

# Expert-count ablation at tiny scale (same active compute as switch_tiny_8).
for _experts in (4, 16):
    SIZES[f"switch_tiny_{_experts}"] = ModelConfig(
        name=f"switch_tiny_{_experts}", mlp_activation="relu", tie_embeddings=True,
        moe=_SWITCH.replace(num_experts=_experts), **_TINY,
    )  # fmt: skip

# The larger untuned model proxy-tuning steers at tiny scale (ablation_proxy_tuning): twice
# switch_tiny_dense's width, 3+3 layers, the same byte vocabulary.
SIZES["switch_tiny_dense_large"] = ModelConfig(
    name="switch_tiny_dense_large", mlp_activation="relu", tie_embeddings=True,
    **{**_TINY, "d_model": 64, "head_dim": 16, "d_ff": 256, "num_encoder_layers": 3,
       "num_decoder_layers": 3},
)  # fmt: skip

# Small variants (the "small" experiment scale): Switch on T5 1.0 small shapes
# (d_model 512, d_ff 2048, 8 heads, 6+6 layers), the others on T5 v1.1 small shapes.
_T5_1_0_SMALL = dict(
    d_model=512, num_heads=8, d_ff=2048, num_encoder_layers=6, num_decoder_layers=6, **_T5_1_0
)
_T5_1_1_SMALL = dict(
    d_model=512, num_heads=6, d_ff=1024, num_encoder_layers=8, num_decoder_layers=8, **_T5_1_1
)
for _experts in (8, 16, 32):
    SIZES[f"switch_small_{_experts}"] = ModelConfig(
        name=f"switch_small_{_experts}",
        moe=_SWITCH.replace(num_experts=_experts),
        **_T5_1_0_SMALL,
    )
SIZES.update({
    "switch_small_dense": ModelConfig(name="switch_small_dense", **_T5_1_0_SMALL),
    "gs_small": ModelConfig(name="gs_small", moe=_GSHARD.replace(num_experts=8), **_T5_1_1_SMALL),
    "ec_small": ModelConfig(name="ec_small", moe=_EXPERT_CHOICE.replace(num_experts=8),
                            **_T5_1_1_SMALL),
    "st_moe_small": ModelConfig(name="st_moe_small", moe=_ST_MOE.replace(num_experts=8),
                                **_T5_1_1_SMALL),
})  # fmt: skip


def dense_counterpart(config: ModelConfig) -> ModelConfig:
    """The dense model with the same active compute per token as ``config``.

    Where a sparse layer's active width (k experts + shared experts) equals d_ff and
    there is no extra dense MLP (Switch: top-1, experts of size d_ff), this is simply
    the config without experts. Otherwise the sparse layers become one always-used
    "expert" of the active width (a router over one expert gives weight 1, and a
    capacity factor of 1 never drops): dense compute, same FLOPs, same placement.
    Expert choice counts ``capacity_factor_train`` experts per token (its average).
    """
    moe = config.moe
    if moe is None:
        return config
    expert = moe.expert_d_ff(config.d_ff)

    def active_width(decoder: bool) -> float:
        if moe.router_type(decoder=decoder) == "experts_choose":
            k: float = moe.capacity_factor_train * moe.expert_granularity
        else:
            k = moe.num_selected(decoder=decoder)
        return (k + moe.num_shared_experts) * expert

    widths = {active_width(False), active_width(True)}
    name = f"{config.name}_dense"
    if widths == {config.d_ff} and not moe.extra_dense_mlp:
        return config.replace(name=name, moe=None)
    if len(widths) != 1 or not float(next(iter(widths))).is_integer():
        raise ValueError(
            f"{config.name}: encoder and decoder sparse layers have active widths "
            f"{sorted(widths)}; one dense counterpart needs a single integer width"
        )
    width = int(next(iter(widths)))
    dense_moe = moe.replace(
        num_experts=1, num_selected_experts=1, decoder_num_selected_experts=None,
        encoder_router="tokens_choose", expert_granularity=1, num_shared_experts=0,
        expert_mlp_dim=width, capacity_factor_train=1.0, capacity_factor_eval=1.0,
        aux_loss_coef=0.0, router_z_loss_coef=0.0, router_jitter_noise=0.0,
        batch_prioritized_routing=False, dropless=False,
    )  # fmt: skip
    return config.replace(name=name, moe=dense_moe)


def get_config(name: str, **overrides) -> ModelConfig:
    """A named config from the size table, with optional field overrides."""
    if name not in SIZES:
        raise KeyError(f"unknown model size {name!r}; known sizes: {sorted(SIZES)}")
    config = SIZES[name]
    return config.replace(**overrides) if overrides else config
