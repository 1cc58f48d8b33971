"""Typed recipes for building an MoE from a dense checkpoint, and the MoE config each gives.

Two families (see ``../shared/references/lineage.md`` sections 1 and 2):

* ``UpcycleRecipe`` (sparse upcycling, Komatsuzaki et al. 2022; t5x ``UpcycleCheckpointer``;
  Mixtral-style copies): every sparse layer's experts are copies of that layer's dense MLP,
  optionally with noise or Drop-Upcycling's partial re-initialisation. More parameters,
  ``k`` times the active FFN compute.
* ``SplitRecipe`` (LLaMA-MoE, Zhu et al. 2024; DeepSeekMoE shared experts): the dense
  FFN's ``d_ff`` neurons are partitioned into experts of the same total size.

``RouterRecipe`` says how the new routers start: ``fresh`` (normal(0.02), as the model
initialises them: t5x re-initialises routers), ``zero`` (uniform routing; ties go to the
lowest expert index), or ``hidden`` (mergekit-moe's hidden-state rule, from prompts).

``moe_config_for`` turns (dense config, recipe) into the target ``ModelConfig``: the
structural MoE fields come from the recipe, the training knobs (capacity, losses, expert
dropout, dispatch) from ``recipe.moe`` (a template ``MoeConfig``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from flan_moe.model.config import ModelConfig, MoeConfig

SplitMethod = Literal["random", "clustering", "sharing_inner", "sharing_inter"]
RouterInit = Literal["fresh", "zero", "hidden"]
SPLIT_METHODS = ("random", "clustering", "sharing_inner", "sharing_inter")
ROUTER_INITS = ("fresh", "zero", "hidden")

# Default training knobs of a constructed MoE: Mixtral / LLaMA-MoE style renormalised
# top-k combine weights and dropless dispatch, so an untrained upcycled model computes
# exactly what the dense one does (no token is ever dropped by a full expert).
DEFAULT_MOE = MoeConfig(renormalize_top_k=True, dispatch="gather", dropless=True)


class ConstructionError(ValueError):
    """A dense checkpoint and a construction recipe do not fit together."""


@dataclass(frozen=True)
class Placement:
    """Which layers of each stack become sparse: ``i % every == offset``.

    ``every=2, offset=1`` is every other layer starting at layer 1 (Switch / t5x sparse
    upcycling, Komatsuzaki et al.: half of the MLP layers); ``every=4, offset=3`` every
    fourth (ST-MoE); ``every=1, offset=0`` all layers (Mixtral, LLaMA-MoE). ``offset``
    None means ``every - 1``. Explicit tuples override per stack.
    """

    every: int = 2
    offset: int | None = None
    encoder_layers: tuple[int, ...] | None = None
    decoder_layers: tuple[int, ...] | None = None

    def layers(self, num_layers: int, *, decoder: bool) -> tuple[int, ...]:
        explicit = self.decoder_layers if decoder else self.encoder_layers
        if explicit is not None:
            bad = [i for i in explicit if not 0 <= i < num_layers]
            if bad:
                raise ConstructionError(
                    f"sparse {'decoder' if decoder else 'encoder'} layers {bad} do not exist: "
                    f"the dense model has {num_layers} layers (0..{num_layers - 1})"
                )
            return tuple(sorted(set(explicit)))
        if self.every < 1:
            raise ConstructionError(f"Placement.every must be >= 1, got {self.every}")
        offset = self.every - 1 if self.offset is None else self.offset
        return tuple(i for i in range(num_layers) if i % self.every == offset % self.every)


@dataclass(frozen=True)
class RouterRecipe:
    """How the routers of the new sparse layers start.

    ``hidden``: one router column per expert from prompts (mergekit-moe ``gate_mode:
    hidden``): mean hidden state of the expert's positive prompts minus that of its
    negative prompts, L2-normalised. Here the hidden state is the sparse block's input
    (the pre-MLP RMSNorm output, which is what our router reads; mergekit uses the
    decoder layer's residual input), averaged over non-padding positions
    (``average=True``, mergekit ``hidden_avg``) or taken at the last one (``hidden``).
    """

    init: RouterInit = "fresh"
    positive_prompts: tuple[tuple[str, ...], ...] = ()  # one tuple of prompts per expert
    negative_prompts: tuple[tuple[str, ...], ...] = ()  # empty, or one tuple per expert
    average: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.init not in ROUTER_INITS:
            raise ConstructionError(f"router init must be one of {ROUTER_INITS}, got {self.init!r}")
        if self.init == "hidden" and not self.positive_prompts:
            raise ConstructionError(
                "router init 'hidden' needs positive_prompts (one tuple of prompts per expert)"
            )


@dataclass(frozen=True)
class UpcycleRecipe:
    """Sparse upcycling: E copies of each sparse layer's dense MLP.

    ``noise_std``: N(0, noise_std) added to every copied weight (mergekit ``noise_scale``;
    levanter adds 1e-3). ``drop_fraction`` r: Drop-Upcycling (Nakamura et al. 2025) re-draws
    a random fraction r of each expert's hidden units (their wi columns and wo rows) from a
    normal with the mean and std of the dense matrix; each expert draws its own units.
    """

    num_experts: int = 8
    num_selected_experts: int = 2
    placement: Placement = field(default_factory=Placement)
    noise_std: float = 0.0
    drop_fraction: float = 0.0
    router: RouterRecipe = field(default_factory=RouterRecipe)
    moe: MoeConfig = DEFAULT_MOE
    seed: int = 0
    kind: Literal["upcycle"] = "upcycle"

    def __post_init__(self) -> None:
        if not 1 <= self.num_selected_experts <= self.num_experts:
            raise ConstructionError(
                f"num_selected_experts={self.num_selected_experts} must be in "
                f"1..num_experts={self.num_experts}"
            )
        if self.noise_std < 0:
            raise ConstructionError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0.0 <= self.drop_fraction <= 1.0:
            raise ConstructionError(f"drop_fraction must be in [0, 1], got {self.drop_fraction}")


@dataclass(frozen=True)
class SplitRecipe:
    """LLaMA-MoE expert construction: the d_ff neurons partitioned into experts.

    * ``random`` (Independent-Random) / ``clustering`` (Independent-Clustering, balanced
      k-means on the L2-normalised rows of the input kernel named by ``cluster_on``):
      d_ff is cut into ``num_experts + num_shared_experts`` equal parts; the first
      ``num_shared_experts`` parts become DeepSeekMoE-style always-on shared experts.
    * ``sharing_inner``: routed expert e = the ``expert_size`` neurons with the highest
      importance for data group e (sets may overlap; no shared experts).
    * ``sharing_inter``: the neurons most experts rank in their top lists form a residual
      (shared) block of ``num_shared_experts`` expert sizes; the routed experts split
      the rest greedily by importance (disjoint, covering d_ff).

    ``scale_factor`` s multiplies the routed experts' output (LLaMA-MoE's
    ``score_scale_factor``; the maintainers recommend N/k, the default when None). It is
    folded into the routed experts' ``wo`` (exact: the expert output is linear in wo).
    Gated MLPs (wi_0, wi_1) use the same partition for both kernels.
    """

    method: SplitMethod = "random"
    num_experts: int = 8
    num_selected_experts: int = 2
    num_shared_experts: int = 0
    expert_size: int | None = None  # sharing_inner only; None = d_ff // num_experts
    scale_factor: float | None = None  # None = num_experts / num_selected_experts
    cluster_on: Literal["wi", "wi_0", "wi_1"] | None = None  # None: wi_1 (gated) / wi
    cluster_max_iter: int = 500
    placement: Placement = field(default_factory=lambda: Placement(every=1, offset=0))
    router: RouterRecipe = field(default_factory=RouterRecipe)
    moe: MoeConfig = DEFAULT_MOE
    seed: int = 0
    kind: Literal["split"] = "split"

    def __post_init__(self) -> None:
        if self.method not in SPLIT_METHODS:
            raise ConstructionError(
                f"split method must be one of {SPLIT_METHODS}, got {self.method!r}"
            )
        if not 1 <= self.num_selected_experts <= self.num_experts:
            raise ConstructionError(
                f"num_selected_experts={self.num_selected_experts} must be in "
                f"1..num_experts={self.num_experts}"
            )
        if self.num_shared_experts < 0:
            raise ConstructionError(
                f"num_shared_experts must be >= 0, got {self.num_shared_experts}"
            )
        if self.method == "sharing_inner" and self.num_shared_experts:
            raise ConstructionError(
                "sharing_inner builds overlapping routed experts only; for a residual block "
                "use method='sharing_inter' (num_shared_experts residual experts)"
            )
        if self.method == "sharing_inter" and self.num_shared_experts < 1:
            raise ConstructionError(
                "sharing_inter needs num_shared_experts >= 1 (the size of the residual block "
                "in experts); use method='random' or 'clustering' for no residual block"
            )
        if self.scale_factor is not None and self.scale_factor <= 0:
            raise ConstructionError(f"scale_factor must be > 0, got {self.scale_factor}")

    @property
    def scale(self) -> float:
        if self.scale_factor is not None:
            return float(self.scale_factor)
        return self.num_experts / self.num_selected_experts

    def expert_width(self, d_ff: int) -> int:
        """Hidden size of one routed (and shared) expert."""
        if self.method == "sharing_inner":
            size = self.expert_size or d_ff // self.num_experts
            if not 1 <= size <= d_ff:
                raise ConstructionError(f"expert_size {size} must be in 1..d_ff={d_ff}")
            return size
        parts = self.num_experts + self.num_shared_experts
        if d_ff % parts:
            raise ConstructionError(
                f"d_ff={d_ff} does not divide into num_experts + num_shared_experts = {parts} "
                "equal experts; choose counts whose sum divides d_ff"
            )
        return d_ff // parts


Recipe = UpcycleRecipe | SplitRecipe


def moe_config_for(dense: ModelConfig, recipe: Recipe) -> ModelConfig:
    """The MoE ``ModelConfig`` a recipe builds from ``dense`` (a config without ``moe``)."""
    if dense.moe is not None:
        raise ConstructionError(
            f"model {dense.name!r} is already sparse (config.moe is set); construction starts "
            "from a dense checkpoint"
        )
    encoder = recipe.placement.layers(dense.num_encoder_layers, decoder=False)
    decoder = recipe.placement.layers(dense.num_decoder_layers, decoder=True)
    if not encoder and not decoder:
        raise ConstructionError(
            f"placement {recipe.placement} makes no layer sparse in a model with "
            f"{dense.num_encoder_layers}+{dense.num_decoder_layers} layers; use every=1 or "
            "list the layers"
        )
    if isinstance(recipe, SplitRecipe):
        width, shared = recipe.expert_width(dense.d_ff), recipe.num_shared_experts
    else:
        width, shared = dense.d_ff, 0
    moe = dataclasses.replace(
        recipe.moe,
        num_experts=recipe.num_experts,
        num_selected_experts=recipe.num_selected_experts,
        decoder_num_selected_experts=None,
        encoder_router="tokens_choose",
        decoder_router="tokens_choose",
        expert_granularity=1,
        num_shared_experts=shared,
        expert_mlp_dim=width,
        encoder_sparse_layers=encoder,
        decoder_sparse_layers=decoder,
        extra_dense_mlp=False,
    )
    name = f"{dense.name}_{recipe.kind}_{recipe.num_experts}"
    return dense.replace(name=name, moe=moe)


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """A JSON-able record of the recipe (stored in the new checkpoint's metadata)."""
    return dataclasses.asdict(recipe)
