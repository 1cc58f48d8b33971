"""Run a Flan-MoE setting or ablation end to end and write its report.

    python scripts/run_experiment.py setting2 --scale tiny
    python -m flan_moe.cli.experiment gin_configs/experiments/ablation_routing.gin --scale small

The first argument is an experiment name (``setting1``, ``setting2``, ``setting3``,
``ablation_routing`` ...; see ``--list``) or the path of a file in
``gin_configs/experiments/``. Those gin files set the macros ``EXPERIMENT`` (the
name), ``SCALE`` (tiny | small | base | paper; ``--scale`` overrides it) and
optionally ``MODELS`` (``{"role": "model gin file stem"}``, e.g. to swap the MoE family
``{"switch": "switch_base_16"}``). Finished stages are skipped on re-run; a failed
stage is reported with its log and resumes on the next run. A stage whose config
changed (e.g. another model in MODELS) re-runs with every stage that depends on it,
unless ``--keep-stale`` (then its results are marked stale); ``--dry_run`` prints the
plan without running anything.

Starting points: at the tiny and small scales every model role is pre-trained first
(span corruption on the local training text), so "before IT" rows are pre-trained models.
At base and paper scale each role needs a pretrained checkpoint, the gin macro
``PRETRAINED_<ROLE>`` (``PRETRAINED_DENSE``, ``PRETRAINED_SWITCH``, ``PRETRAINED_SWITCH_E8``
...) or ``--pretrained ROLE=PATH``, and T5's SentencePiece model as ``VOCABULARY`` /
``--vocabulary``; a missing one stops the run before any stage starts.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util as importlib_util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from flan_moe.cli import validation
from flan_moe.experiments import runner, settings

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT_GIN_DIR = REPO_ROOT / "gin_configs" / "experiments"


def check_data_dir() -> str:
    """FLAN_MOE_DATA_DIR (default ./data) must exist; otherwise say how to get it."""
    data_dir = os.environ.get("FLAN_MOE_DATA_DIR", "data")
    if not Path(data_dir, "mmlu").is_dir() or not Path(data_dir, "bbh").is_dir():
        raise SystemExit(
            f"No data found at FLAN_MOE_DATA_DIR={data_dir!r} (expected mmlu/, bbh/, flan_cot/, "
            "flan_mini/ inside).\nGet it with:  python scripts/fetch_data.py --data-dir data\n"
            "or point FLAN_MOE_DATA_DIR at an existing copy, e.g. "
            "FLAN_MOE_DATA_DIR=../shared/data make run"
        )
    return data_dir


def _from_gin(path: Path) -> tuple[str, str | None, dict[str, str]]:
    import gin  # only at the edge

    from flan_moe.cli.gin_flags import check_macros

    gin.clear_config()
    gin.parse_config_file(str(path))
    roles = {role for scale in settings.SCALES.values() for role in scale.models}
    starting_points = ["VOCABULARY", *(settings.pretrained_macro(r) for r in sorted(roles))]
    check_macros(("EXPERIMENT", "SCALE", "MODELS", *starting_points))

    def macro(name: str, default=None):
        try:
            return gin.query_parameter(f"%{name}")
        except ValueError:
            return default

    name = macro("EXPERIMENT")
    if not name:
        raise SystemExit(f"{path} does not set the EXPERIMENT macro")
    return str(name), macro("SCALE"), dict(macro("MODELS", {}) or {})


def resolve(target: str, scale_name: str | None) -> tuple[settings.Experiment, settings.Scale]:
    models: dict[str, str] = {}
    gin_scale = None
    path = Path(target)
    if not path.suffix and (EXPERIMENT_GIN_DIR / f"{target}.gin").exists():
        path = EXPERIMENT_GIN_DIR / f"{target}.gin"
    if path.suffix == ".gin":
        if not path.exists():
            raise SystemExit(f"no such experiment file: {path}")
        target, gin_scale, models = _from_gin(path)
    scale = settings.get_scale(scale_name or gin_scale or "tiny")
    if models:
        unknown = sorted(set(models) - set(scale.models))
        if unknown:
            raise SystemExit(f"MODELS names unknown roles {unknown}; roles: {sorted(scale.models)}")
        scale = dataclasses.replace(scale, models={**scale.models, **models})
    return settings.get_experiment(target, scale), scale


def _starting_points_from_gin(path: Path, roles: Sequence[str]) -> tuple[str | None, dict]:
    """``VOCABULARY`` and ``PRETRAINED_<ROLE>`` macros of an experiment gin file."""
    import gin  # only at the edge

    gin.clear_config()
    gin.parse_config_file(str(path))

    def macro(name: str):
        try:
            return gin.query_parameter(f"%{name}")
        except ValueError:
            return None

    found = {role: macro(settings.pretrained_macro(role)) for role in roles}
    return macro("VOCABULARY"), {role: str(p) for role, p in found.items() if p}


def with_starting_points(
    target: str,
    experiment: settings.Experiment,
    scale: settings.Scale,
    *,
    vocabulary: str | None,
    pretrained: Sequence[str],
) -> tuple[settings.Experiment, settings.Scale]:
    """The scale with the vocabulary and per-role checkpoints from gin and flags (flags win);
    raises SystemExit naming what is missing (cheap: before any stage or data access)."""
    roles = settings.experiment_roles(experiment)
    gin_vocab, paths = None, {}
    path = Path(target)
    if not path.suffix and (EXPERIMENT_GIN_DIR / f"{target}.gin").exists():
        path = EXPERIMENT_GIN_DIR / f"{target}.gin"
    if path.suffix == ".gin":
        gin_vocab, paths = _starting_points_from_gin(path, roles)
    for item in pretrained:
        role, sep, value = item.partition("=")
        if not sep or role not in scale.models:
            raise SystemExit(
                f"--pretrained {item!r}: use ROLE=PATH with a role of {sorted(scale.models)}"
            )
        paths[role] = value
    vocab = vocabulary or gin_vocab or scale.vocabulary
    scale = dataclasses.replace(scale, vocabulary=vocab, pretrained={**scale.pretrained, **paths})
    try:
        settings.check_starting_points(experiment, scale)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    return settings.get_experiment(experiment.name, scale), scale


def resolve_jobs(value: str) -> int:
    """``--jobs``: a positive number, or 'auto' (2 on a CPU-only install with >= 2 cores).

    'auto' looks for JAX's GPU/TPU plugins without initialising a backend (which would
    take the accelerator's memory in this parent process).
    """
    if value != "auto":
        if not value.isdigit() or int(value) < 1:
            raise validation.InputError(
                f"--jobs must be a positive number or 'auto', got {value!r}"
            )
        return int(value)
    platforms = os.environ.get("JAX_PLATFORMS", "")
    accelerator = platforms not in ("", "cpu") or any(
        importlib_util.find_spec(name) is not None
        for name in ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "libtpu")
    )
    return 1 if accelerator or (os.cpu_count() or 1) < 2 else 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="experiment name or gin file")
    parser.add_argument("--scale", default=None, help="tiny | small | base | paper")
    parser.add_argument("--output_dir", default="experiments_out")
    parser.add_argument("--force", default="", help="comma-separated stage names to re-run")
    parser.add_argument("--quiet", action="store_true", help="do not echo stage output")
    parser.add_argument("--list", action="store_true", help="list experiments and scales")
    parser.add_argument(
        "--dry_run", action="store_true", help="print the plan (stages, which would run, steps)"
    )
    parser.add_argument(
        "--keep-stale",
        "--keep_stale",
        dest="keep_stale",
        action="store_true",
        help="keep finished stages whose config changed (marked stale in the report)",
    )
    parser.add_argument(
        "--pretrained",
        action="append",
        default=[],
        metavar="ROLE=PATH",
        help="a role's pretrained checkpoint (orbax MODEL_DIR, HF folder, T5X directory)",
    )
    parser.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model")
    parser.add_argument(
        "--jobs",
        default="auto",
        help="stages run at once (independent ones only); 'auto': 2 on a CPU-only install "
        "with >= 2 cores, else 1 (accelerator stages would share one device)",
    )
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="rebuild the report from the stages already finished; run nothing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list or not args.experiment:
        for name in settings.EXPERIMENTS:
            print(f"{name}: {settings.get_experiment(name).title}")
        print(f"scales: {', '.join(settings.SCALES)}")
        return 0
    validation.check_experiment_args(args)
    jobs = resolve_jobs(args.jobs)
    experiment, scale = resolve(args.experiment, args.scale)
    experiment, scale = with_starting_points(
        args.experiment, experiment, scale, vocabulary=args.vocabulary, pretrained=args.pretrained
    )
    force = [s for s in args.force.split(",") if s]
    if args.dry_run:
        print(runner.dry_run(experiment, scale, args.output_dir, force=force,
                             keep_stale=args.keep_stale))  # fmt: skip
        return 0
    check_data_dir()
    if args.report_only:
        if force:
            raise SystemExit("--report_only runs no stage, so --force has nothing to re-run")
        paths, unfinished = runner.rebuild_report(experiment, scale, args.output_dir)
        if unfinished:
            print(f"{len(unfinished)} stage(s) not finished, their cells are missing: "
                  + ", ".join(unfinished))  # fmt: skip
        print(f"Report: {paths['report.html']}")
        return 0
    outcomes, paths = runner.run_experiment(
        experiment,
        scale,
        args.output_dir,
        force=force,
        verbose=not args.quiet,
        keep_stale=args.keep_stale,
        jobs=jobs,
    )
    print()
    for table_md in sorted(paths["report.md"].parent.glob("table_*.md")):
        print(table_md.read_text())
    print(f"Report: {paths['report.html']}")
    failed = [o for o in outcomes if o.status in ("failed", "blocked")]
    if failed:
        print(f"{len(failed)} stage(s) did not finish; re-run the same command to resume.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(validation.run_cli(main))
