"""Turn an ``Experiment`` at a ``Scale`` into pipeline stages, run them, write the report.

Layout of an experiment directory::

    <root>/<experiment name>/<scale>/
        <run slug>/instruction_tune/   stage folder (stage.log, DONE.json) + model/ (MODEL_DIR)
        <run slug>/finetune/           ... + model/ (initialised from instruction_tune/model)
        <run slug>/eval_<mode>_<k>shot/   stage folder; results.json is written by the
                                          evaluator beside the evaluated checkpoint
        report/                        tables (CSV, Markdown), figures (PNG), report.html

Stages run as subprocesses of ``python -m flan_moe.cli.train`` and
``python -m flan_moe.cli.eval``, the same commands a user types.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from flan_moe.experiments import figures, pipeline, report
from flan_moe.experiments.settings import (
    FINETUNE_TASK,
    INSTRUCTION_MIXTURE,
    Experiment,
    ModelRun,
    Scale,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def _gin_value(value: Any) -> str:
    """A Python literal gin parses: strings quoted, dicts/lists/numbers as repr."""
    return repr(value)


def _train_command(
    scale: Scale,
    run: ModelRun,
    *,
    model_dir: Path,
    task: str,
    steps: int,
    initial_checkpoint: Path | None,
    run_gin: str,
) -> tuple[str, ...]:
    model_gin = REPO_ROOT / "gin_configs" / "models" / f"{scale.models[run.role]}.gin"
    bindings: dict[str, Any] = {
        "MODEL_DIR": str(model_dir),
        "TRAIN_STEPS": steps,
        "MIXTURE_OR_TASK_NAME": task,
        "TASK_FEATURE_LENGTHS": dict(scale.feature_lengths),
        "BATCH_SIZE": scale.batch_size,
    }
    if initial_checkpoint is not None:
        bindings["INITIAL_CHECKPOINT_PATH"] = str(initial_checkpoint)
    bindings.update(dict(run.bindings))
    return (
        sys.executable,
        "-m",
        "flan_moe.cli.train",
        f"--gin_file={model_gin}",
        f"--gin_file={REPO_ROOT / 'gin_configs' / 'runs' / run_gin}",
        *(f"--gin.{k}={_gin_value(v)}" for k, v in bindings.items()),
    )


def _eval_command(
    scale: Scale, experiment: Experiment, *, model_dir: Path, mode: str, shots: int
) -> tuple[str, ...]:
    command = [
        sys.executable,
        "-m",
        "flan_moe.cli.eval",
        f"--checkpoint_dir={model_dir}",
        f"--suites={','.join(experiment.eval_suites)}",
        f"--mode={mode}",
        f"--shots={shots}",
        f"--max_decode_length={scale.max_decode_length}",
        f"--batch_size={scale.eval_batch_size}",
        "--latest_only",
    ]
    if scale.eval_subsample is not None:
        command.append(f"--subsample={scale.eval_subsample}")
    return tuple(command)


def shot_counts(experiment: Experiment, scale: Scale) -> tuple[int, ...]:
    # Finetuned single-task models are evaluated zero-shot, as in the paper.
    return (0,) if experiment.finetune else (0, scale.few_shot)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    run: ModelRun
    stages: tuple[pipeline.Stage, ...]
    final_model_dir: Path


def plan_run(experiment: Experiment, scale: Scale, run: ModelRun, root: Path) -> RunPlan:
    name = slug(run.label)
    stages: list[pipeline.Stage] = []
    model_dir: Path | None = None
    fraction = float(dict(run.bindings).get("STEP_FRACTION", 1.0))
    run = dataclasses.replace(run, bindings=tuple(
        (k, v) for k, v in run.bindings if k != "STEP_FRACTION"
    ))  # fmt: skip
    if experiment.instruction_tune:
        stage = f"{name}/instruction_tune"
        model_dir = pipeline.stage_dir(root, stage) / "model"
        steps = max(1, round(scale.instruction_tune_steps * fraction))
        stages.append(pipeline.Stage(stage, command=_train_command(
            scale, run, model_dir=model_dir, task=INSTRUCTION_MIXTURE, steps=steps,
            initial_checkpoint=None, run_gin="instruction_tune.gin",
        )))  # fmt: skip
    if experiment.finetune:
        stage = f"{name}/finetune"
        init = model_dir
        model_dir = pipeline.stage_dir(root, stage) / "model"
        stages.append(pipeline.Stage(stage, depends_on=tuple(s.name for s in stages), command=(
            _train_command(scale, run, model_dir=model_dir, task=FINETUNE_TASK,
                           steps=scale.finetune_steps, initial_checkpoint=init,
                           run_gin="finetune.gin")
        )))  # fmt: skip
    assert model_dir is not None, "an experiment trains at least once"
    trained = tuple(s.name for s in stages)
    for mode in experiment.eval_modes:
        for shots in shot_counts(experiment, scale):
            stages.append(pipeline.Stage(
                f"{name}/eval_{mode}_{shots}shot", depends_on=trained,
                command=_eval_command(scale, experiment, model_dir=model_dir, mode=mode,
                                      shots=shots),
            ))  # fmt: skip
    return RunPlan(run, tuple(stages), model_dir)


def experiment_root(base: str | os.PathLike, experiment: Experiment, scale: Scale) -> Path:
    return Path(base) / experiment.name / scale.name


def results_files(model_dir: Path) -> tuple[str, ...]:
    return tuple(sorted(glob.glob(str(model_dir / "**" / "results.json"), recursive=True)))


def _config_text(model_dir: Path) -> str:
    path = model_dir / "config.gin"
    return path.read_text() if path.exists() else ""


def build_report(
    experiment: Experiment, scale: Scale, plans: Sequence[RunPlan], root: Path
) -> dict[str, Path]:
    runs = [
        report.Run(
            label=p.run.label,
            results_files=results_files(p.final_model_dir),
            attributes=dict(p.run.attributes),
            config_text=_config_text(p.final_model_dir),
        )
        for p in plans
    ]
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables: list[report.Table] = []
    for shots in shot_counts(experiment, scale):
        title = f"{experiment.title} — {shots}-shot ({scale.name} scale)"
        if experiment.finetune:
            tables.append(report.results_table(runs, shots=shots, title=title,
                                               columns=report.REASONING_COLUMNS))  # fmt: skip
        elif experiment.baseline:
            tables.append(
                report.ablation_table(runs, baseline=experiment.baseline, shots=shots, title=title)
            )
        else:
            tables.append(report.results_table(runs, shots=shots, title=title))
    figs = figures.draw(experiment, runs, out, few_shot=scale.few_shot)
    notes = (
        f"Reproduces: {experiment.paper_result}.",
        f"Scale {scale.name}: instruction tuning {scale.instruction_tune_steps} steps, "
        f"finetuning {scale.finetune_steps} steps, batch {scale.batch_size}, lengths "
        f"{dict(scale.feature_lengths)}, eval subsample "
        f"{scale.eval_subsample or 'all'} per subtask.",
    )
    return report.write_report(
        report.Report(experiment.title, tuple(tables), tuple(figs), tuple(runs), notes), out
    )


def run_experiment(
    experiment: Experiment,
    scale: Scale,
    base_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    verbose: bool = True,
    out: TextIO = sys.stdout,
) -> tuple[list[pipeline.StageOutcome], dict[str, Path]]:
    """Run (or resume) every stage, then write the report; returns outcomes and paths."""
    root = experiment_root(base_dir, experiment, scale)
    plans = [plan_run(experiment, scale, run, root) for run in experiment.runs]
    stages = [stage for plan in plans for stage in plan.stages]
    outcomes = pipeline.run_pipeline(stages, root, force=force, verbose=verbose, out=out)
    paths = build_report(experiment, scale, plans, root)
    return outcomes, paths
