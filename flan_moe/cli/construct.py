"""Build an MoE checkpoint from a dense one: ``python -m flan_moe.cli.construct ...``.

Examples::

    # sparse upcycling (t5x / Komatsuzaki et al.): every other layer becomes 8 copies of
    # its dense MLP, top-2 with renormalised weights, fresh routers
    python -m flan_moe.cli.construct --checkpoint=/tmp/dense --output_dir=/tmp/upcycled \\
        --method=upcycle --num_experts=8 --num_selected_experts=2 --placement=every_other

    # LLaMA-MoE Independent-Clustering: all layers, 8 experts of d_ff/8, top-2, scale 4
    python -m flan_moe.cli.construct --checkpoint=/tmp/dense --output_dir=/tmp/split \\
        --method=clustering --num_experts=8 --num_selected_experts=2 --placement=all

    # Sharing-Inter with a 2-expert residual block, importance from the local FLAN mix
    FLAN_MOE_DATA_DIR=../shared/data python -m flan_moe.cli.construct --checkpoint=/tmp/dense \\
        --output_dir=/tmp/inter --method=sharing_inter --num_experts=6 --num_shared_experts=2 \\
        --importance_data=flan_local --importance_examples=16

``--checkpoint`` is a MODEL_DIR (its latest checkpoint) or one ``checkpoint_<step>``
directory written by ``flan_moe.cli.train`` (or imported by ``flan_moe.cli.convert``). The
new checkpoint is ``<output_dir>/checkpoint_<step>`` (step 0, or the dense step with
``--keep_step``) with the params only: the optimizer state starts fresh, as t5x's
upcycling does. Train from it with ``--gin.INITIAL_CHECKPOINT_PATH=<output_dir>`` and
``--gin.MODEL_OVERRIDES=<the printed overrides>`` (the MoE config is also stored in the
checkpoint's metadata under ``model_config``; the recipe under ``construction``).

Recipe flags: ``--recipe_json`` (a ``recipe_to_dict`` JSON, as the experiment runner
passes it) or the individual flags below. Data flags: ``--importance_data`` (Sharing
splits) is ``flan_local`` (the local FLAN mix; one data group per expert, datasets dealt
round-robin to the groups) or a JSONL file of ``{"inputs", "targets", "group"}`` rows;
``--router_prompts`` (``--router=hidden``) is a JSON list, one ``{"positive": [...],
"negative": [...]}`` per expert.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flan_moe.construction import recipes

log = logging.getLogger("flan_moe.cli.construct")

METHODS = ("upcycle", *recipes.SPLIT_METHODS)
PLACEMENTS = {"every_other": (2, 1), "every_fourth": (4, 3), "all": (1, 0)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="dense MODEL_DIR or checkpoint_<step> dir")
    p.add_argument("--output_dir", required=True, help="where the MoE checkpoint is written")
    p.add_argument("--recipe_json", default=None, help="a full recipe as JSON (overrides flags)")
    p.add_argument("--method", choices=METHODS, default="upcycle")
    p.add_argument("--num_experts", type=int, default=8)
    p.add_argument("--num_selected_experts", type=int, default=2)
    p.add_argument("--num_shared_experts", type=int, default=0, help="split methods only")
    p.add_argument("--expert_size", type=int, default=None, help="sharing_inner only")
    p.add_argument("--scale_factor", type=float, default=None, help="split; default N/k")
    p.add_argument(
        "--placement",
        choices=sorted(PLACEMENTS),
        default=None,
        help="sparse layers (default: every_other to upcycle, all to split)",
    )
    p.add_argument("--noise_std", type=float, default=0.0, help="upcycle: noise on copies")
    p.add_argument("--drop_fraction", type=float, default=0.0, help="upcycle: Drop-Upcycling r")
    p.add_argument("--router", choices=recipes.ROUTER_INITS, default="fresh")
    p.add_argument("--router_prompts", default=None, help="JSON file for --router=hidden")
    p.add_argument("--router_last_token", action="store_true", help="hidden: last position")
    p.add_argument("--moe_overrides", default="{}", help="JSON of MoeConfig training knobs")
    p.add_argument("--importance_data", default=None, help="flan_local or a JSONL file")
    p.add_argument("--importance_examples", type=int, default=32, help="examples per group")
    p.add_argument("--importance_batch_size", type=int, default=8)
    p.add_argument("--max_length", type=int, default=256, help="input token cap (data, prompts)")
    p.add_argument("--max_target_length", type=int, default=64, help="target token cap")
    p.add_argument("--keep_step", action="store_true", help="keep the dense step number")
    p.add_argument("--seed", type=int, default=0)
    return p  # fmt: skip


def recipe_from_dict(values: dict[str, Any]) -> recipes.Recipe:
    """The inverse of ``recipes.recipe_to_dict``."""
    values = dict(values)
    kind = values.pop("kind", None)
    placement = dict(values.pop("placement", {}))
    for key in ("encoder_layers", "decoder_layers"):
        if placement.get(key) is not None:
            placement[key] = tuple(placement[key])
    router = dict(values.pop("router", {}))
    for key in ("positive_prompts", "negative_prompts"):
        router[key] = tuple(tuple(p) for p in router.get(key, ()))
    moe = dict(values.pop("moe", {}))
    for key in ("encoder_sparse_layers", "decoder_sparse_layers"):
        if moe.get(key) is not None:
            moe[key] = tuple(moe[key])
    cls = {"upcycle": recipes.UpcycleRecipe, "split": recipes.SplitRecipe}.get(kind)
    if cls is None:
        raise ValueError(f"recipe kind must be 'upcycle' or 'split', got {kind!r}")
    return cls(
        placement=recipes.Placement(**placement),
        router=recipes.RouterRecipe(**router),
        moe=recipes.DEFAULT_MOE.replace(**moe),
        **values,
    )


def _router_recipe(args: argparse.Namespace) -> recipes.RouterRecipe:
    positive: tuple = ()
    negative: tuple = ()
    if args.router == "hidden":
        if not args.router_prompts:
            raise ValueError("--router=hidden needs --router_prompts=FILE.json")
        experts = json.loads(Path(args.router_prompts).read_text())
        positive = tuple(tuple(e["positive"]) for e in experts)
        if any(e.get("negative") for e in experts):
            negative = tuple(tuple(e.get("negative", ())) for e in experts)
    return recipes.RouterRecipe(
        init=args.router, positive_prompts=positive, negative_prompts=negative,
        average=not args.router_last_token, seed=args.seed,
    )  # fmt: skip


def recipe_from_args(args: argparse.Namespace) -> recipes.Recipe:
    """The recipe the flags describe (``--recipe_json`` wins when given)."""
    if args.recipe_json:
        return recipe_from_dict(json.loads(args.recipe_json))
    moe = recipes.DEFAULT_MOE.replace(**json.loads(args.moe_overrides))
    default = "every_other" if args.method == "upcycle" else "all"
    every, offset = PLACEMENTS[args.placement or default]
    common = dict(
        num_experts=args.num_experts, num_selected_experts=args.num_selected_experts,
        placement=recipes.Placement(every=every, offset=offset), router=_router_recipe(args),
        moe=moe, seed=args.seed,
    )  # fmt: skip
    if args.method == "upcycle":
        return recipes.UpcycleRecipe(
            noise_std=args.noise_std, drop_fraction=args.drop_fraction, **common
        )
    return recipes.SplitRecipe(
        method=args.method, num_shared_experts=args.num_shared_experts,
        expert_size=args.expert_size, scale_factor=args.scale_factor, **common,
    )  # fmt: skip


def _pad(rows: Sequence[list[int]], shape: tuple[int, int]):
    """Rows padded with 0 into a fixed ``shape`` (one compiled importance step)."""
    import numpy as np

    out = np.zeros(shape, np.int32)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _examples(spec: str, num_groups: int, per_group: int) -> list[list[tuple[str, str]]]:
    """(inputs, targets) text pairs in ``num_groups`` data groups."""
    groups: list[list[tuple[str, str]]] = [[] for _ in range(num_groups)]
    if spec == "flan_local":
        from flan_moe.data import records, templates

        sources = [("flan_mini", d) for d in records.MINI_DATASETS]
        sources += [("flan_cot", d) for d in records.COT_DATASETS]
        for i, (collection, dataset) in enumerate(sources):
            for record in records.read_records(collection, dataset, "train")[:per_group]:
                rendered = templates.render(record, cot=collection == "flan_cot")
                groups[i % num_groups].append((rendered.candidates[-1], rendered.targets))
    else:
        for n, line in enumerate(Path(spec).read_text().splitlines()):
            if line.strip():
                row = json.loads(line)
                groups[int(row.get("group", n)) % num_groups].append(
                    (row["inputs"], row["targets"])
                )
    groups = [g[: per_group * 4] for g in groups]
    empty = [i for i, g in enumerate(groups) if not g]
    if empty:
        raise ValueError(f"importance data {spec!r} leaves data groups {empty} empty")
    return groups


def importance_batches(args, vocab, num_groups: int) -> list[list[dict[str, Any]]]:
    """Token batches per data group for ``construction.importance``."""
    import numpy as np

    eos, cap = vocab.eos_id, args.max_length
    batched = []
    for group in _examples(args.importance_data, num_groups, args.importance_examples):
        batches = []
        for start in range(0, len(group), args.importance_batch_size):
            chunk = group[start : start + args.importance_batch_size]
            shape_in = (args.importance_batch_size, cap)
            shape_out = (args.importance_batch_size, args.max_target_length)
            inputs = _pad([vocab.encode(x)[: cap - 1] + [eos] for x, _ in chunk], shape_in)
            targets = _pad(
                [vocab.encode(y)[: args.max_target_length - 1] + [eos] for _, y in chunk],
                shape_out,
            )
            decoder_inputs = np.concatenate([np.zeros_like(targets[:, :1]), targets[:, :-1]], 1)
            batches.append({"encoder_input_tokens": inputs, "decoder_input_tokens": decoder_inputs,
                            "decoder_target_tokens": targets})  # fmt: skip
        batched.append(batches)
    return batched


def run(args: argparse.Namespace) -> Path:
    from flan_moe.construction import build, hidden_router, importance
    from flan_moe.data.vocabularies import get_vocabulary
    from flan_moe.training import checkpoints

    recipe = recipe_from_args(args)
    params, dense_config, metadata = checkpoints.load_params(args.checkpoint)
    vocab = get_vocabulary(metadata.get("vocabulary", "byte"))
    scores = vectors = None
    if isinstance(recipe, recipes.SplitRecipe) and recipe.method.startswith("sharing"):
        if not args.importance_data:
            raise ValueError(
                f"--method={recipe.method} needs --importance_data (flan_local or FILE)"
            )
        groups = importance_batches(args, vocab, recipe.num_experts)
        scores = importance.importance_scores(dense_config, params, groups)
    if recipe.router.init == "hidden":
        encode = lambda texts: [vocab.encode(t)[: args.max_length] for t in texts]
        vectors = hidden_router.router_vectors(
            dense_config, params, [encode(p) for p in recipe.router.positive_prompts],
            [encode(p) for p in recipe.router.negative_prompts], average=recipe.router.average,
        )  # fmt: skip
    moe_params, moe_config, reports = build.construct(
        params, dense_config, recipe, importance=scores, router_vectors=vectors
    )
    step = int(metadata.get("step", 0)) if args.keep_step else 0
    record = {
        "recipe": recipes.recipe_to_dict(recipe),
        "source": str(Path(args.checkpoint).resolve()),
        "source_step": int(metadata.get("step", 0)),
        "source_model_config": dense_config.to_dict(),
        "layers": [dataclasses.asdict(r) for r in reports],
        "optimizer_state": "fresh",
    }
    new_metadata = {**metadata, "model_config": moe_config.to_dict(), "construction": record}
    path = save_params(args.output_dir, moe_params, step=step, metadata=new_metadata)
    print(f"wrote {path}: {moe_config.name}, sparse layers {[r.layer for r in reports]}")
    print(f"train it with --gin.INITIAL_CHECKPOINT_PATH={args.output_dir} and")
    print(f"  --gin.MODEL_OVERRIDES={model_overrides(moe_config)!r}")
    return Path(path)


def model_overrides(config) -> dict[str, Any]:
    """MODEL_OVERRIDES (a gin-readable dict) that turn any MoE size-table config into
    ``config``."""
    return config.to_dict()


def save_params(output_dir: str, params: Any, *, step: int, metadata: dict[str, Any]) -> str:
    """``<output_dir>/checkpoint_<step>`` in the trainer's layout (params, train, metadata),
    without an optimizer state: a run started from it (INITIAL_CHECKPOINT_PATH) creates a
    fresh one, as t5x's upcycling does (``state/param_states.* -> None``)."""
    import os

    import jax
    import numpy as np
    import orbax.checkpoint as ocp

    from flan_moe.training.checkpoints import STEP_PREFIX, list_checkpoints

    output_dir = os.path.abspath(output_dir)
    if list_checkpoints(output_dir):
        raise FileExistsError(f"{output_dir} already holds checkpoints; choose a new --output_dir")
    handlers = {
        "params": ocp.StandardCheckpointHandler(),
        "train": ocp.JsonCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
    }
    options = ocp.CheckpointManagerOptions(step_prefix=STEP_PREFIX, create=True)
    manager = ocp.CheckpointManager(output_dir, options=options, item_handlers=handlers)
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(jax.tree_util.tree_map(np.asarray, params)),
                train=ocp.args.JsonSave({"step": step, "rng": [0, 0], "data_position": 0}),
                metadata=ocp.args.JsonSave({**metadata, "step": step}),
            ),
        )
        manager.wait_until_finished()
    finally:
        manager.close()
    return os.path.join(output_dir, f"{STEP_PREFIX}_{step}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
