"""Run a Flan-MoE setting or ablation end to end and write its report.

    python scripts/run_experiment.py setting2 --scale tiny
    python -m flan_moe.cli.experiment gin_configs/experiments/ablation_routing.gin --scale small

The first argument is an experiment name (``setting1``, ``setting2``, ``setting3``,
``ablation_routing`` ...; see ``--list``) or the path of a file in
``gin_configs/experiments/``. Those gin files set the macros ``EXPERIMENT`` (the
name), ``SCALE`` (tiny | small | base | paper; ``--scale`` overrides it) and
optionally ``MODELS`` (``{"role": "model gin file stem"}``, e.g. to swap the MoE family
``{"switch": "switch_base_16"}``). Finished stages are skipped on re-run; a failed
stage is reported with its log and resumes on the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
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
    check_macros(("EXPERIMENT", "SCALE", "MODELS"))

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiment", nargs="?", help="experiment name or gin file")
    parser.add_argument("--scale", default=None, help="tiny | small | base | paper")
    parser.add_argument("--output_dir", default="experiments_out")
    parser.add_argument("--force", default="", help="comma-separated stage names to re-run")
    parser.add_argument("--quiet", action="store_true", help="do not echo stage output")
    parser.add_argument("--list", action="store_true", help="list experiments and scales")
    args = parser.parse_args(argv)
    if args.list or not args.experiment:
        for name in settings.EXPERIMENTS:
            print(f"{name}: {settings.get_experiment(name).title}")
        print(f"scales: {', '.join(settings.SCALES)}")
        return 0
    validation.check_experiment_args(args)
    experiment, scale = resolve(args.experiment, args.scale)
    check_data_dir()
    outcomes, paths = runner.run_experiment(
        experiment,
        scale,
        args.output_dir,
        force=[s for s in args.force.split(",") if s],
        verbose=not args.quiet,
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
