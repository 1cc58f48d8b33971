"""Turn an ``Experiment`` at a ``Scale`` into pipeline stages, run them, write the report.

Layout of an experiment directory::

    <root>/<experiment name>/<scale>/
        pretrain/<role>/               span-corruption pre-training (tiny / small scales), shared
                                       by every run of that role; its model/ is "before IT"
        <run slug>/instruction_tune/   stage folder (stage.log, DONE.json) + model/ (MODEL_DIR)
        <run slug>/finetune/           ... + model/ (initialised from instruction_tune/model)
        <run slug>/eval_<mode>_<k>shot/   stage folder; results.json is written by the
                                          evaluator beside the evaluated checkpoint
        report/                        tables (CSV, Markdown), figures (PNG), report.html

Stages run as subprocesses of ``python -m flan_moe.cli.train`` and
``python -m flan_moe.cli.eval``, the same commands a user types.
"""

from __future__ import annotations

import ast
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

from flan_moe.experiments import (
    compile_cache,
    figures,
    paper_numbers,
    pipeline,
    report,
    stage_keys,
)
from flan_moe.experiments.settings import (
    FINETUNE_TASK,
    INSTRUCTION_MIXTURE,
    Experiment,
    ModelRun,
    Scale,
    check_starting_points,
    experiment_roles,
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
        except SystemExit as e:  # argparse / CLI errors: a failed stage, not a dead pipeline
            raise RuntimeError(f"{module} exited with status {e.code}") from None
        finally:
            logger.removeHandler(handler)
            for h in old_handlers:
                logger.addHandler(h)
        if isinstance(status, int) and status != 0:
            raise RuntimeError(f"{module} returned status {status}")
        if getattr(status, "stopped", False):  # a TrainResult that ended before its target
            raise RuntimeError(f"{module}: {status.stop_message()}")

    return run


def train_target(command: tuple[str, ...]) -> pipeline.TrainTarget | None:
    """The planned end of a ``flan_moe.cli.train`` command (from its --gin.X bindings)."""
    if "flan_moe.cli.train" not in command:
        return None
    bindings = {}
    for arg in command:
        if arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin.") :].split("=", 1)
            with contextlib.suppress(ValueError, SyntaxError):
                bindings[name] = ast.literal_eval(value)
    if "MODEL_DIR" not in bindings or "TRAIN_STEPS" not in bindings:
        return None
    lengths = bindings.get("TASK_FEATURE_LENGTHS") or {}
    return pipeline.TrainTarget(
        model_dir=str(bindings["MODEL_DIR"]),
        step=int(bindings["TRAIN_STEPS"]),
        batch_size=int(bindings.get("BATCH_SIZE") or 0),
        tokens_per_example=int(sum(lengths.values())) if isinstance(lengths, dict) else 0,
    )


def _stage(name: str, command: tuple[str, ...], depends_on: tuple[str, ...], in_process: bool):
    """A pipeline stage for a CLI command: keyed by the command and its gin files; a
    train command is done only at its planned step."""
    keys = {
        "depends_on": depends_on,
        "fingerprint": stage_keys.command_fingerprint(command),
        "train_target": train_target(command),
    }
    if in_process:
        return pipeline.Stage(name, function=_run_in_process(command), **keys)
    return pipeline.Stage(name, command=command, **keys)


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
    if scale.vocabulary is not None:
        bindings["DataOptions.vocabulary"] = scale.vocabulary
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
        # The Flan protocols: MMLU direct ranked over A-D (hendrycks / lm-eval); BBH direct
        # and every chain of thought generated, then exact match / final-answer extraction.
        "--method=paper",
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
class StartingPoint:
    """Where a role's training starts: a checkpoint (None = random init) and the stages
    that produce it (a pre-training stage; none for an external checkpoint)."""

    checkpoint: Path | str | None = None
    stages: tuple[pipeline.Stage, ...] = ()
    depends_on: tuple[str, ...] = ()


def plan_pretrain(
    scale: Scale, role: str, root: Path, *, in_process: bool = False
) -> StartingPoint:
    """Span-corruption pre-training of one role from scratch (``scale.pretrain_steps``).

    Every role gets the same steps, batch and lengths, so dense and MoE models see equal
    pre-training tokens. Run bindings (freezing, loss ablations ...) are not applied: they
    belong to instruction tuning, and every run of a role starts from this one model.
    """
    stage = f"pretrain/{role}"
    model_dir = pipeline.stage_dir(root, stage) / "model"
    run = ModelRun(f"pretrained {role}", role, bindings=tuple(scale.pretrain_bindings.items()))
    command = _train_command(
        scale, run, model_dir=model_dir, task=scale.pretrain_task, steps=scale.pretrain_steps,
        initial_checkpoint=None, run_gin="pretrain.gin",
    )  # fmt: skip
    return StartingPoint(model_dir, (_stage(stage, command, (), in_process),), (stage,))


def plan_starting_points(
    experiment: Experiment, scale: Scale, root: Path, *, in_process: bool = False
) -> dict[str, StartingPoint]:
    """Each role's starting point: pre-training (tiny / small), a given checkpoint (base /
    paper; ``check_starting_points`` first), or random weights when neither is set."""
    check_starting_points(experiment, scale)
    starts = {}
    for role in experiment_roles(experiment):
        if scale.pretrained.get(role):
            starts[role] = StartingPoint(scale.pretrained[role])
        elif scale.pretrain_steps > 0:
            starts[role] = plan_pretrain(scale, role, root, in_process=in_process)
        else:
            starts[role] = StartingPoint()
    return starts


def starting_point_note(experiment: Experiment, scale: Scale) -> str:
    """One report line saying where the runs started (and so what "before IT" means)."""
    roles = experiment_roles(experiment)
    if all(scale.pretrained.get(r) for r in roles):
        given = ", ".join(f"{r}: {scale.pretrained[r]}" for r in roles)
        return f"Started from pretrained checkpoints ({given}); vocabulary {scale.vocabulary}."
    if scale.pretrain_steps > 0:
        return (
            f"Every model pre-trained from scratch first: {scale.pretrain_task}, "
            f"{scale.pretrain_steps} steps x batch {scale.batch_size} (equal tokens for dense "
            f"and MoE); vocabulary {scale.vocabulary}. 'Before IT' rows are these models."
        )
    return "Started from random initialisation (no pre-training at this scale)."


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
    experiment: Experiment,
    scale: Scale,
    run: ModelRun,
    root: Path,
    *,
    in_process: bool = False,
    start: StartingPoint | None = None,
    dense_start: StartingPoint | None = None,
) -> RunPlan:
    """Stages of one run: (instruction-tune) -> (finetune) -> evaluate, from ``start``.

    A run with a ``construction`` starts instead from an MoE built out of the dense model
    (``dense_start``: the pre-trained dense model where the scale pre-trains); a
    ``from_scratch`` run starts from random weights."""
    name = slug(run.label)
    start = start or StartingPoint()
    if run.construction is not None or run.from_scratch:
        start = StartingPoint()  # built from the dense source below, or random init
    stages: list[pipeline.Stage] = list(start.stages)
    model_dir: Path | None = None
    initial, depends = start.checkpoint, start.depends_on
    if run.construction is not None:
        from flan_moe.experiments import construction_stages

        built, initial, run = construction_stages.plan_construction(
            scale, run, root, in_process=in_process, source=dense_start
        )
        stages += built
        depends = (built[-1].name,)
    if experiment.instruction_tune:
        stage = f"{name}/instruction_tune"
        model_dir = pipeline.stage_dir(root, stage) / "model"
        steps = max(1, round(scale.instruction_tune_steps * run.step_fraction))
        stages.append(_stage(stage, _train_command(
            scale, run, model_dir=model_dir, task=INSTRUCTION_MIXTURE, steps=steps,
            initial_checkpoint=initial, run_gin="instruction_tune.gin",
        ), depends, in_process))  # fmt: skip
    if experiment.finetune:
        stage = f"{name}/finetune"
        init = model_dir if model_dir is not None else initial
        model_dir = pipeline.stage_dir(root, stage) / "model"
        stages.append(_stage(stage, _train_command(
            scale, run, model_dir=model_dir, task=FINETUNE_TASK, steps=scale.finetune_steps,
            initial_checkpoint=init, run_gin="finetune.gin",
        ), (*start.depends_on, *(s.name for s in stages[len(start.stages):])),
            in_process))  # fmt: skip
    assert model_dir is not None, "an experiment trains at least once"
    trained = tuple(s.name for s in stages[len(start.stages) :])
    stages += _eval_stages(experiment, scale, name, model_dir, trained, in_process)
    if run.attributes.get("family") == "moe" or run.attributes.get("num_experts", 1) > 1:
        stages.append(_stage(f"{name}/analyze_routing",
                             _analyze_command(scale, experiment, model_dir=model_dir),
                             trained, in_process))  # fmt: skip
    return RunPlan(run, tuple(stages), model_dir)


def _analyze_command(scale: Scale, experiment: Experiment, *, model_dir: Path) -> tuple[str, ...]:
    """Routing analysis of a sparse run's final checkpoint over the held-out suites
    (``routing_analysis.json`` beside its results.json; the report's routing section)."""
    return (
        sys.executable,
        "-m",
        "flan_moe.cli.analyze",
        f"--checkpoint={model_dir}",
        f"--suites={','.join(experiment.eval_suites)}",
        f"--examples_per_task={scale.eval_subsample or 8}",
        f"--max_input_length={scale.eval_max_input_length}",
        f"--batch_size={scale.eval_batch_size}",
    )


def plan_untuned(
    experiment: Experiment,
    scale: Scale,
    run: ModelRun,
    root: Path,
    *,
    in_process: bool = False,
    start: StartingPoint | None = None,
) -> RunPlan:
    """The same model before instruction tuning: its starting weights, evaluated alike.

    With a pre-training stage in ``start`` (tiny / small) that is the pre-trained model,
    evaluated in place; with an external checkpoint (base / paper) it is that checkpoint,
    imported into a MODEL_DIR by a 0-step training stage; with no start, a random
    initialisation.
    """
    untuned = dataclasses.replace(
        run,
        label=f"{run.label} (before IT)",
        attributes={**run.attributes, "untuned_of": run.label, "instruction_tuned": False},
    )
    name = slug(untuned.label)
    start = start or StartingPoint()
    if start.stages:  # the pipeline's own pre-trained model
        assert isinstance(start.checkpoint, Path)
        evals = _eval_stages(experiment, scale, name, start.checkpoint, start.depends_on,
                             in_process)  # fmt: skip
        return RunPlan(untuned, tuple(evals), start.checkpoint)
    stage = f"{name}/initial_model"
    model_dir = pipeline.stage_dir(root, stage) / "model"
    init = _stage(stage, _train_command(
        scale, untuned, model_dir=model_dir, task="synthetic", steps=0,
        initial_checkpoint=start.checkpoint, run_gin="instruction_tune.gin",
    ), (), in_process)  # fmt: skip
    evals = _eval_stages(experiment, scale, name, model_dir, (stage,), in_process)
    return RunPlan(untuned, (init, *evals), model_dir)


def plan_experiment(
    experiment: Experiment, scale: Scale, root: Path, *, in_process: bool = False
) -> list[RunPlan]:
    """Every run's stages; each role's pre-training stage comes with its first run.

    Raises ``ValueError`` (before anything runs) when a pretrained checkpoint or the
    vocabulary the scale requires is missing.
    """
    if experiment.stages_module:  # an experiment that plans itself (e.g. merging_stages)
        own = importlib.import_module(f"flan_moe.experiments.{experiment.stages_module}")
        return own.plan_experiment(experiment, scale, root, in_process=in_process)
    starts = plan_starting_points(experiment, scale, root, in_process=in_process)
    planned: set[str] = set()

    def first_use(role: str) -> StartingPoint:
        start = starts[role]
        if role in planned:
            return dataclasses.replace(start, stages=())
        planned.add(role)
        return start

    plans = [
        plan_run(
            experiment,
            scale,
            r,
            root,
            in_process=in_process,
            start=first_use(r.role),
            dense_start=starts.get("dense"),
        )  # fmt: skip
        for r in experiment.runs
    ]
    if any(r.construction is not None for r in experiment.runs):
        from flan_moe.experiments.construction_stages import dedupe_shared_stages

        unique = dedupe_shared_stages([p.stages for p in plans])
        plans = [dataclasses.replace(p, stages=s) for p, s in zip(plans, unique, strict=True)]
    if "instruction_tuning_gain" in experiment.figures:
        plans += [
            plan_untuned(experiment, scale, r, root, in_process=in_process, start=starts[r.role])
            for r in experiment.runs
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
    experiment: Experiment,
    scale: Scale,
    plans: Sequence[RunPlan],
    root: Path,
    *,
    stale_runs: Sequence[str] = (),
) -> dict[str, Path]:
    """``stale_runs``: labels of runs with a stale stage (``--keep-stale``); their cells
    are marked "(stale)" in the tables and listed in the notes."""
    if experiment.stages_module:  # its own tables (e.g. merging_stages)
        own = importlib.import_module(f"flan_moe.experiments.{experiment.stages_module}")
        return own.build_report(experiment, scale, plans, root, stale_runs=stale_runs)
    runs = [
        report.Run(
            label=p.run.label + (" (stale)" if p.run.label in stale_runs else ""),
            results_files=results_files(p.final_model_dir),
            attributes=dict(p.run.attributes),
            config_text=_config_text(p.final_model_dir),
        )
        for p in plans
    ]
    out = root / "report"
    out.mkdir(parents=True, exist_ok=True)
    selection = report.Selection(split="val", subsample=scale.eval_subsample)
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
        columns = report.REASONING_COLUMNS if experiment.finetune else report.HELDOUT_COLUMNS
        paper = paper_numbers.rows_for(experiment.name, shots=shots,
                                       columns=tuple(c for _, c in columns))  # fmt: skip
        if experiment.baseline and not experiment.finetune:
            tables.append(report.ablation_table(runs, baseline=experiment.baseline, shots=shots,
                                                title=title, selection=selection,
                                                scale=scale.name, paper=paper))  # fmt: skip
        else:
            tables.append(report.results_table(runs, shots=shots, title=title, columns=columns,
                                               selection=selection, scale=scale.name,
                                               paper=paper))  # fmt: skip
        if pairs := report.stated_differences(runs):
            tables.append(report.differences_table(pairs, shots=shots, columns=columns,
                                                   title=f"Differences — {title}",
                                                   selection=selection,
                                                   scale=scale.name))  # fmt: skip
    figs = figures.draw(experiment, runs, out, few_shot=scale.few_shot, selection=selection)
    notes = (
        f"Reproduces: {experiment.paper_result}.",
        f"Scale {scale.name}: instruction tuning {scale.instruction_tune_steps} steps, "
        f"finetuning {scale.finetune_steps} steps, batch {scale.batch_size}, lengths "
        f"{dict(scale.feature_lengths)}, eval subsample "
        f"{scale.eval_subsample or 'all'} per subtask.",
        starting_point_note(experiment, scale),
    )
    if stale_runs:
        notes += (
            f"STALE (kept with --keep-stale; their config changed since they ran): "
            f"{', '.join(stale_runs)}.",
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
    keep_stale: bool = False,
    jobs: int = 1,
) -> tuple[list[pipeline.StageOutcome], dict[str, Path]]:
    """Run (or resume) every stage, then write the report; returns outcomes and paths.

    ``in_process`` runs the train/eval commands in this process instead of subprocesses;
    ``keep_stale`` keeps finished stages whose config changed and marks them in the report;
    ``jobs`` > 1 runs that many independent subprocess stages at once.
    """
    root = experiment_root(base_dir, experiment, scale)
    plans = plan_experiment(experiment, scale, root, in_process=in_process)
    stages = [stage for plan in plans for stage in plan.stages]
    # the stages (subprocesses, or functions here) share compiled programs through disk
    cache = compile_cache.in_process if in_process else compile_cache.environment
    with cache(root):
        outcomes = pipeline.run_pipeline(
            stages, root, force=force, verbose=verbose, out=out, keep_stale=keep_stale, jobs=jobs
        )
    stale = {o.name for o in outcomes if o.status == "stale"}
    stale_runs = [p.run.label for p in plans if any(s.name in stale for s in p.stages)]
    paths = build_report(experiment, scale, plans, root, stale_runs=stale_runs)
    return outcomes, paths


def rebuild_report(
    experiment: Experiment, scale: Scale, base_dir: str | os.PathLike
) -> tuple[dict[str, Path], list[str]]:
    """The report from the stages already finished, running nothing: (paths, names of the
    stages not finished). Runs with a finished stage whose config changed since are marked
    stale, as ``--keep-stale`` would; unfinished stages leave their cells missing."""
    root = experiment_root(base_dir, experiment, scale)
    plans = plan_experiment(experiment, scale, root)
    stages = [stage for plan in plans for stage in plan.stages]
    planned = pipeline.plan_pipeline(stages, root, keep_stale=True)
    stale = {p.stage.name for p in planned if p.action == "stale"}
    stale_runs = [p.run.label for p in plans if any(s.name in stale for s in p.stages)]
    unfinished = [p.stage.name for p in planned if p.action == "run"]
    return build_report(experiment, scale, plans, root, stale_runs=stale_runs), unfinished


def dry_run(
    experiment: Experiment,
    scale: Scale,
    base_dir: str | os.PathLike,
    *,
    force: Sequence[str] = (),
    keep_stale: bool = False,
) -> str:
    """The plan of ``run_experiment`` (stages, which would run, steps/tokens), as text."""
    root = experiment_root(base_dir, experiment, scale)
    stages = [s for plan in plan_experiment(experiment, scale, root) for s in plan.stages]
    planned = pipeline.plan_pipeline(stages, root, force=force, keep_stale=keep_stale)
    return f"Plan for {root}:\n" + pipeline.format_plan(planned)
