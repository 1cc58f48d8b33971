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

import contextlib
import dataclasses
import glob
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
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


def _run_in_process(command: tuple[str, ...]) -> Callable[[Path, TextIO], None]:
    """A stage function running a ``python -m flan_moe.cli.X`` command in this process.

    Faster than a subprocess (no interpreter start-up, compiled functions are reused);
    the tests use it. Output and ``flan_moe`` log lines go to the stage log.
    """
    module, argv = command[2], list(command[3:])

    def run(folder: Path, log: TextIO) -> None:
        del folder
        main = importlib.import_module(module).main
        logger = logging.getLogger("flan_moe")
        handler = logging.StreamHandler(log)
        handler._flan_moe = True  # type: ignore[attr-defined]  # the CLIs add no handler
        logger.addHandler(handler)
        old_handlers = [h for h in logger.handlers if h is not handler]
        for h in old_handlers:
            logger.removeHandler(h)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                status = main(argv)
        finally:
            logger.removeHandler(handler)
            for h in old_handlers:
                logger.addHandler(h)
        if isinstance(status, int) and status != 0:
            raise RuntimeError(f"{module} returned status {status}")

    return run


def _stage(name: str, command: tuple[str, ...], depends_on: tuple[str, ...], in_process: bool):
    if in_process:
        return pipeline.Stage(name, function=_run_in_process(command), depends_on=depends_on)
    return pipeline.Stage(name, command=command, depends_on=depends_on)


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
    bindings.update(scale.train_bindings)
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
        # Direct answers are ranked over the options (rank classification); chain of
        # thought is generated and its final answer extracted.
        f"--method={'score' if mode == 'direct' else 'generate'}",
        f"--max_decode_length={scale.max_decode_length}",
        f"--batch_size={scale.eval_batch_size}",
        f"--max_input_length={scale.eval_max_input_length}",
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


def _eval_stages(
    experiment: Experiment,
    scale: Scale,
    name: str,
    model_dir: Path,
    depends_on: tuple[str, ...],
    in_process: bool,
) -> list[pipeline.Stage]:
    return [
        _stage(
            f"{name}/eval_{mode}_{shots}shot",
            _eval_command(scale, experiment, model_dir=model_dir, mode=mode, shots=shots),
            depends_on,
            in_process,
        )
        for mode in experiment.eval_modes
        for shots in shot_counts(experiment, scale)
    ]


def plan_run(
    experiment: Experiment, scale: Scale, run: ModelRun, root: Path, *, in_process: bool = False
) -> RunPlan:
    name = slug(run.label)
    stages: list[pipeline.Stage] = []
    model_dir: Path | None = None
    initial: Path | None = None
    if run.construction is not None:
        from flan_moe.experiments import construction_stages

        built, initial, run = construction_stages.plan_construction(
            scale, run, root, in_process=in_process
        )
        stages += built
    if experiment.instruction_tune:
        stage = f"{name}/instruction_tune"
        model_dir = pipeline.stage_dir(root, stage) / "model"
        steps = max(1, round(scale.instruction_tune_steps * run.step_fraction))
        stages.append(_stage(stage, _train_command(
            scale, run, model_dir=model_dir, task=INSTRUCTION_MIXTURE, steps=steps,
            initial_checkpoint=initial, run_gin="instruction_tune.gin",
        ), tuple(s.name for s in stages[-1:]), in_process))  # fmt: skip
    if experiment.finetune:
        stage = f"{name}/finetune"
        init = model_dir
        model_dir = pipeline.stage_dir(root, stage) / "model"
        stages.append(_stage(stage, _train_command(
            scale, run, model_dir=model_dir, task=FINETUNE_TASK, steps=scale.finetune_steps,
            initial_checkpoint=init, run_gin="finetune.gin",
        ), tuple(s.name for s in stages), in_process))  # fmt: skip
    assert model_dir is not None, "an experiment trains at least once"
    trained = tuple(s.name for s in stages)
    stages += _eval_stages(experiment, scale, name, model_dir, trained, in_process)
    return RunPlan(run, tuple(stages), model_dir)


def plan_untuned(
    experiment: Experiment, scale: Scale, run: ModelRun, root: Path, *, in_process: bool = False
) -> RunPlan:
    """The same model before instruction tuning: its initial weights, evaluated alike.

    (From scratch at the tiny scale, so "before" is a random initialisation there; at
    larger scales pass INITIAL_CHECKPOINT_PATH in the run's bindings.)
    """
    untuned = dataclasses.replace(
        run,
        label=f"{run.label} (before IT)",
        attributes={**run.attributes, "untuned_of": run.label, "instruction_tuned": False},
    )
    name = slug(untuned.label)
    stage = f"{name}/initial_model"
    model_dir = pipeline.stage_dir(root, stage) / "model"
    init = _stage(stage, _train_command(
        scale, untuned, model_dir=model_dir, task="synthetic", steps=0,
        initial_checkpoint=None, run_gin="instruction_tune.gin",
    ), (), in_process)  # fmt: skip
    evals = _eval_stages(experiment, scale, name, model_dir, (stage,), in_process)
    return RunPlan(untuned, (init, *evals), model_dir)


def plan_experiment(
    experiment: Experiment, scale: Scale, root: Path, *, in_process: bool = False
) -> list[RunPlan]:
    plans = [plan_run(experiment, scale, r, root, in_process=in_process) for r in experiment.runs]
    if any(r.construction is not None for r in experiment.runs):
        from flan_moe.experiments.construction_stages import dedupe_shared_stages

        unique = dedupe_shared_stages([p.stages for p in plans])
        plans = [dataclasses.replace(p, stages=s) for p, s in zip(plans, unique, strict=True)]
    if "instruction_tuning_gain" in experiment.figures:
        plans += [
            plan_untuned(experiment, scale, r, root, in_process=in_process) for r in experiment.runs
        ]
    return plans


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
        shots_text = (
            "zero-shot"
            if shots == 0
            else f"few-shot (MMLU {shots}-shot, BBH {min(shots, report.MAX_SHOTS['bbh'])}-shot)"
        )
        if experiment.finetune:
            shots_text = "zero-shot after finetuning"
        title = f"{experiment.title} — {shots_text} ({scale.name} scale)"
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
    in_process: bool = False,
) -> tuple[list[pipeline.StageOutcome], dict[str, Path]]:
    """Run (or resume) every stage, then write the report; returns outcomes and paths.

    ``in_process`` runs the train/eval commands in this process instead of subprocesses.
    """
    root = experiment_root(base_dir, experiment, scale)
    plans = plan_experiment(experiment, scale, root, in_process=in_process)
    stages = [stage for plan in plans for stage in plan.stages]
    outcomes = pipeline.run_pipeline(stages, root, force=force, verbose=verbose, out=out)
    paths = build_report(experiment, scale, plans, root)
    return outcomes, paths
