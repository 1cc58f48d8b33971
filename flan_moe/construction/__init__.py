"""MoE from a dense model: sparse upcycling and LLaMA-MoE FFN splitting.

Pure functions on param trees (numpy in, numpy out, seeded):

* ``recipes``: ``UpcycleRecipe``, ``SplitRecipe``, ``RouterRecipe``, ``Placement`` and
  ``moe_config_for`` (the target ``ModelConfig``);
* ``partition``: Independent-Random / Independent-Clustering labels, Sharing-Inner /
  Sharing-Inter neuron sets;
* ``experts``: one layer's dense MLP -> experts, shared experts, router kernel;
* ``importance``: LLaMA-MoE's per-neuron importance |h * dL/dh| on data you pass in;
* ``hidden_router``: mergekit-moe's hidden-state router vectors from prompts;
* ``build.construct``: the whole tree.

``flan_moe.cli.construct`` runs a recipe from a checkpoint to a new checkpoint.
"""

from flan_moe.construction.build import LayerReport, construct, sparse_layer_names
from flan_moe.construction.recipes import (
    ConstructionError,
    Placement,
    RouterRecipe,
    SplitRecipe,
    UpcycleRecipe,
    moe_config_for,
    recipe_to_dict,
)

__all__ = [
    "ConstructionError",
    "LayerReport",
    "Placement",
    "RouterRecipe",
    "SplitRecipe",
    "UpcycleRecipe",
    "construct",
    "moe_config_for",
    "recipe_to_dict",
    "sparse_layer_names",
]
