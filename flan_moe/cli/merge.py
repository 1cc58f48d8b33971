"""Merge orbax checkpoints of one architecture into a new checkpoint.

    python -m flan_moe.cli.merge --method=ties --base=BASE_DIR \
        --models=RUN_A,RUN_B --weights=1,1 --density=0.5 --lam=1.0 --output=OUT_DIR

Methods (``flan_moe.merging.soups``): ``lawa`` (the uniform average of the last ``--k``
checkpoints of the one MODEL_DIR in ``--models``, Kaddour 2022), ``uniform`` (soup;
the final step of Model Ratatouille), ``linear`` (``--weights``), ``warm`` (uniform
average of fine-tunes of ``--base``), ``task_arithmetic`` (``--base``, ``--lam``),
``ties`` (``--density``),
``dare_linear`` / ``dare_ties`` (``--density``, ``--seed``, ``--rescale=inverse_density|l1``).
Each path is a MODEL_DIR (its latest checkpoint) or a ``checkpoint_<step>`` directory.
``--align_experts`` first permutes every model's experts (and router columns) to match
the first model's (``flan_moe.merging.alignment``, Hungarian weight matching).

All models (and the base) must have the same architecture (dropout rates aside) and
vocabulary: a difference is an error naming both. The output is ``OUT_DIR/checkpoint_0``
(fresh optimizer state) that ``flan_moe.cli.eval`` reads and training can start from
(INITIAL_CHECKPOINT_PATH); its metadata records the recipe under ``"merge"``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("flan_moe.merge")
METHODS = (
    "lawa",
    "uniform",
    "linear",
    "warm",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
)
NEEDS_BASE = ("warm", "task_arithmetic", "ties", "dare_linear", "dare_ties")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flan_moe.cli.merge", description=__doc__)
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--models", required=True, help="comma-separated MODEL_DIRs / checkpoints")
    p.add_argument("--base", default=None, help="the shared init (task-vector methods, warm)")
    p.add_argument("--weights", default=None, help="comma-separated, one per model")
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--density", type=float, default=1.0)
    p.add_argument(
        "--rescale", choices=("inverse_density", "l1", "none"), default="inverse_density"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k", type=int, default=5, help="lawa: average the last k checkpoints")
    p.add_argument("--align_experts", action="store_true")
    p.add_argument("--output", required=True)
    return p


def architecture(config):
    """The config without its training-time settings (dropout rates): a model pre-trained
    without dropout and its fine-tunes with dropout share one architecture."""
    moe = config.moe.replace(expert_dropout_rate=0.0) if config.moe is not None else None
    return config.replace(dropout_rate=0.0, moe=moe)


def _load_all(paths: list[str]):
    from flan_moe.training.checkpoints import load_params

    loaded = [load_params(p) for p in paths]
    config, meta0 = loaded[0][1], loaded[0][2]
    for path, (_, cfg, meta) in zip(paths[1:], loaded[1:], strict=True):
        if architecture(cfg) != architecture(config):
            raise SystemExit(
                f"{path} has model config {cfg.name!r}, {paths[0]} has {config.name!r} "
                f"(or they differ in a field): merge models of one architecture"
            )
        if meta.get("vocabulary") != meta0.get("vocabulary"):
            raise SystemExit(
                f"{path} uses vocabulary {meta.get('vocabulary')!r}, {paths[0]} uses "
                f"{meta0.get('vocabulary')!r}: merge models of one vocabulary"
            )
    return [p for p, _, _ in loaded], config, meta0


def merge(args: argparse.Namespace):
    from flan_moe.merging import alignment, averaging, soups

    paths = [p for p in args.models.split(",") if p]
    if args.method == "lawa":
        if len(paths) != 1:
            raise SystemExit(
                "--method=lawa takes one MODEL_DIR in --models (its last --k checkpoints)"
            )
        paths = [p for _, p in averaging.lawa_checkpoints(paths[0], args.k)]
    if args.method in NEEDS_BASE and not args.base:
        raise SystemExit(f"--method={args.method} needs --base=<the models' shared init>")
    all_paths = paths + ([args.base] if args.base else [])
    trees, config, meta = _load_all(all_paths)
    models, base = trees[: len(paths)], (trees[-1] if args.base else None)
    if args.align_experts:
        models = [models[0]] + [alignment.align_experts(models[0], m)[0] for m in models[1:]]
    w = [float(x) for x in args.weights.split(",")] if args.weights else None
    m = args.method
    if m in ("uniform", "lawa"):
        merged = soups.uniform(models)
    elif m == "linear":
        merged = soups.linear(models, w)
    elif m == "warm":
        merged = soups.warm(base, models)
    elif m == "task_arithmetic":
        merged = soups.task_arithmetic(base, models, w, lam=args.lam)
    elif m == "ties":
        merged = soups.ties(base, models, w, density=args.density, lam=args.lam)
    else:
        merged = soups.dare(
            base,
            models,
            w,
            density=args.density,
            seed=args.seed,
            rescale=args.rescale,
            lam=args.lam,
            consensus="ties" if m == "dare_ties" else None,
        )
    recipe = {
        "method": m,
        "models": paths,
        "base": args.base,
        "weights": w,
        "lam": args.lam,
        "density": args.density,
        "rescale": args.rescale,
        "seed": args.seed,
        "align_experts": args.align_experts,
        "k": args.k if m == "lawa" else None,
    }
    return merged, config, meta, recipe


def write(params, config, meta: dict, recipe: dict, output: str) -> str:
    """``output/checkpoint_0`` around ``params`` (fresh optimizer), recipe in metadata."""
    import jax

    from flan_moe import partitioning
    from flan_moe.training.checkpoints import Checkpointer
    from flan_moe.training.optimizers import OptimizerConfig
    from flan_moe.training.trainer import Trainer

    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    trainer = Trainer(model_config=config, optimizer_config=OptimizerConfig(), mesh=mesh)
    state = trainer.init_from_params(params, 0)
    keep = {k: v for k, v in meta.items() if k not in ("step", "merge")}
    checkpointer = Checkpointer(output)
    try:
        path = checkpointer.save(
            state,
            data_position=0,
            metadata={**keep, "model_config": config.to_dict(), "merge": recipe},
        )
    finally:
        checkpointer.close()
    return path


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    merged, config, meta, recipe = merge(args)
    out = write(merged, config, meta, recipe, args.output)
    log.info("wrote %s (%s)", out, json.dumps(recipe))
    print(out)
    return out


if __name__ == "__main__":
    main()
