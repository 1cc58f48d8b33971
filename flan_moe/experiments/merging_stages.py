"""The averaging, merging and proxy-tuning ablations (issue 17): declarations, stages, report.

Each experiment starts from pre-trained models as setting 2 does (``pretrain/<role>`` at
tiny / small scale, ``PRETRAINED_<ROLE>`` at base / paper) and plans its own stages:

* ``ablation_weight_averaging``: one instruction-tuning run per model (dense, Switch) with
  EMA and SWA kept in the optimizer state and checkpoints every quarter of the run; each
  weight choice (last checkpoint, EMA, SWA, LAWA over the last 3 checkpoints) is evaluated
  by ``flan_moe.cli.eval --weights=raw|ema|swa|lawa_3``.
* ``ablation_merging``: per model, instruction tuning on each of two disjoint FLAN task
  clusters (``tasks/local_clusters.py``) and on their union (``flan_local``), all from the
  same pre-trained model; the two cluster models merged by ``flan_moe.cli.merge`` (uniform
  soup, task arithmetic, TIES, DARE; for the MoE each also after expert alignment).
* ``ablation_proxy_tuning``: a larger dense model, untuned (the base) and tuned (the
  ceiling); a small Switch MoE untuned (anti-expert) and tuned (expert); the base steered
  by the pair (``flan_moe.cli.eval --proxy``, alpha 1). The report adds the gap closed,
  (proxy - base) / (tuned - base), with a paired bootstrap interval.

Every arm is evaluated on MMLU / BBH, direct, zero-shot (the question is the weights, not
the prompt), into its own ``<arm>/results/results.json``; the report shows every arm with
its 95% bootstrap interval and the stated paired differences.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flan_moe.experiments import pipeline, report
from flan_moe.experiments.settings import INSTRUCTION_MIXTURE, Experiment, ModelRun, Scale

SHOTS = 0
LAWA_K = 3
MERGE_METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    # (label, flan_moe.cli.merge method, its flags); task-vector methods use the
    # pre-trained model as --base, lambda 1 (the sum of the two task vectors)
    ("uniform soup", "uniform", ()),
    ("task arithmetic (lambda 1)", "task_arithmetic", ("--lam=1.0",)),
    ("TIES (density 0.5)", "ties", ("--density=0.5", "--lam=1.0")),
    ("DARE (density 0.5, 1/p rescale)", "dare_linear",
     ("--density=0.5", "--rescale=inverse_density", "--seed=0", "--lam=1.0")),
)  # fmt: skip
CLUSTERS = (("knowledge", "flan_local_knowledge"), ("commonsense", "flan_local_commonsense"))
LARGE_ROLE = "dense_large"  # settings._LARGER_DENSE maps it to a model per scale
_FAMILIES = (("dense", "dense"), ("moe", "switch"))


def _experiment(name: str, title: str, paper: str, runs: Sequence[ModelRun]) -> Experiment:
    return Experiment(name=name, title=title, paper_result=paper, runs=tuple(runs),
                      eval_modes=("direct",), stages_module="merging_stages")  # fmt: skip


def weight_averaging(scale: Scale) -> Experiment:
    del scale
    runs = [ModelRun(f"{family} IT run", role, attributes={"family": family})
            for family, role in _FAMILIES]  # fmt: skip
    return _experiment(
        "ablation_weight_averaging", "Ablation: last checkpoint vs EMA vs SWA vs LAWA",
        "Izmailov et al. 2018 (SWA), Kaddour 2022 (LAWA), Sanyal et al. 2023 (early weight "
        "averaging); none reported for Flan-MoE", runs,
    )  # fmt: skip


def merging(scale: Scale) -> Experiment:
    del scale
    runs = [ModelRun(f"{family} IT runs", role, attributes={"family": family})
            for family, role in _FAMILIES]  # fmt: skip
    return _experiment(
        "ablation_merging", "Ablation: merging models tuned on disjoint FLAN clusters",
        "Wortsman et al. 2022 (soups), Ilharco et al. 2023 (task arithmetic), Yadav et al. "
        "2023 (TIES), Yu et al. 2024 (DARE); none reported for Flan-MoE", runs,
    )  # fmt: skip


def proxy_tuning(scale: Scale) -> Experiment:
    del scale
    runs = (ModelRun("large dense", LARGE_ROLE, attributes={"family": "dense"}),
            ModelRun("small Switch", "switch", attributes={"family": "moe"}))  # fmt: skip
    return _experiment(
        "ablation_proxy_tuning", "Ablation: proxy-tuning a larger untuned model",
        "Liu et al. 2024 (proxy-tuning); none reported for Flan-MoE", runs,
    )  # fmt: skip


EXPERIMENTS: dict[str, Callable[[Scale], Experiment]] = {
    "ablation_weight_averaging": weight_averaging,
    "ablation_merging": merging,
    "ablation_proxy_tuning": proxy_tuning,
}


# ------------------------------------------------------------------------------- stages


def _train(scale, run, root, name, *, start, task, extra=(), in_process) -> tuple[Any, Path]:
    """One instruction-tuning stage of ``run`` from ``start``: (stage, its MODEL_DIR)."""
    from flan_moe.experiments import runner

    model_dir = pipeline.stage_dir(root, name) / "model"
    bound = dataclasses.replace(run, bindings=(*run.bindings, *extra))
    command = runner._train_command(
        scale, bound, model_dir=model_dir, task=task, steps=scale.instruction_tune_steps,
        initial_checkpoint=start.checkpoint, run_gin="instruction_tune.gin",
    )  # fmt: skip
    return runner._stage(name, command, start.depends_on, in_process), model_dir


def _arm(experiment, scale, root, label, role, attributes, *, checkpoint, flags=(), depends,
         stages=(), in_process):  # fmt: skip
    """A report row: ``stages`` then its evaluation into ``<arm>/results/``."""
    from flan_moe.experiments import runner

    name = runner.slug(label)
    results = pipeline.stage_dir(root, name) / "results"
    evals = []
    for mode in experiment.eval_modes:
        command = runner._eval_command(scale, experiment, model_dir=checkpoint, mode=mode,
                                       shots=SHOTS)  # fmt: skip
        if any(f.startswith("--proxy=") for f in flags):  # the three models come with --proxy
            command = tuple(a for a in command if not a.startswith("--checkpoint_dir="))
        command = (*command, f"--output_dir={results}", *flags)
        evals.append(runner._stage(f"{name}/eval_{mode}_{SHOTS}shot", command, depends,
                                   in_process))  # fmt: skip
    run = ModelRun(label, role, attributes=attributes)
    return runner.RunPlan(run, (*stages, *evals), results)


def averaging_bindings(scale: Scale) -> tuple[tuple[str, Any], ...]:
    """EMA (decay 1 - 4 / steps), SWA (from half the run, every steps / 16), checkpoints every
    quarter (LAWA reads the last ``LAWA_K``)."""
    steps = scale.instruction_tune_steps
    quarter = max(1, steps // 4)
    return (
        ("OptimizerConfig.ema_decay", 1.0 - 1.0 / quarter),
        ("OptimizerConfig.swa_start", steps // 2),
        ("OptimizerConfig.swa_every", max(1, steps // 16)),
        ("TrainConfig.checkpoint_every", quarter),
        ("TrainConfig.keep_checkpoints", LAWA_K + 1),
    )


def _plan_weight_averaging(experiment, scale, root, starts, in_process):
    plans = []
    bindings = averaging_bindings(scale)
    values = dict(bindings)
    for run in experiment.runs:
        family = run.attributes["family"]
        start = starts[run.role]
        it, model_dir = _train(
            scale, run, root, f"{family}/instruction_tune", start=start,
            task=INSTRUCTION_MIXTURE, extra=bindings, in_process=in_process,
        )  # fmt: skip
        choices = (
            ("raw", "last checkpoint"),
            ("ema", f"EMA (decay {values['OptimizerConfig.ema_decay']:g})"),
            ("swa", f"SWA (from step {values['OptimizerConfig.swa_start']}, every "
                    f"{values['OptimizerConfig.swa_every']})"),
            (f"lawa_{LAWA_K}", f"LAWA (last {LAWA_K} checkpoints, every "
                               f"{values['TrainConfig.checkpoint_every']} steps)"),
        )  # fmt: skip
        for i, (weights, what) in enumerate(choices):
            plans.append(_arm(
                experiment, scale, root, f"{family}: {what}", run.role,
                {"family": family, "weights": weights}, checkpoint=model_dir,
                flags=(f"--weights={weights}",), depends=(it.name,),
                stages=(*start.stages, it) if i == 0 else (), in_process=in_process,
            ))  # fmt: skip
    return plans


def _merge_stage(root, name, models, base, method, flags, in_process, depends):
    from flan_moe.experiments import runner

    out = pipeline.stage_dir(root, name) / "model"
    command = (
        sys.executable, "-m", "flan_moe.cli.merge", f"--method={method}",
        f"--models={','.join(str(m) for m in models)}", f"--output={out}", *flags,
    )  # fmt: skip
    if method != "uniform":
        command = (*command, f"--base={base}")
    return runner._stage(name, command, depends, in_process), out


def _plan_merging(experiment, scale, root, starts, in_process):
    plans = []
    for run in experiment.runs:
        family = run.attributes["family"]
        start = starts[run.role]
        tuned: dict[str, tuple[Any, Path]] = {}
        for cluster, mixture in (*CLUSTERS, ("union", INSTRUCTION_MIXTURE)):
            tuned[cluster] = _train(scale, run, root, f"{family}_{cluster}/instruction_tune",
                                    start=start, task=mixture, in_process=in_process)  # fmt: skip
        for i, (cluster, (stage, model_dir)) in enumerate(tuned.items()):
            what = "tuned on the union (flan_local)" if cluster == "union" else (
                f"tuned on the {cluster} cluster only")  # fmt: skip
            plans.append(_arm(
                experiment, scale, root, f"{family}: {what}", run.role,
                {"family": family, "arm": cluster}, checkpoint=model_dir,
                depends=(stage.name,), stages=(*(start.stages if i == 0 else ()), stage),
                in_process=in_process,
            ))  # fmt: skip
        models = [tuned[c][1] for c, _ in CLUSTERS]
        depends = tuple(tuned[c][0].name for c, _ in CLUSTERS)
        aligned = (False, True) if family == "moe" else (False,)
        for label, method, flags in MERGE_METHODS:
            for align in aligned:
                arm = f"{family}: merged, {label}" + (", experts aligned" if align else "")
                name = f"{family}_merge_{method}" + ("_aligned" if align else "")
                merge, out = _merge_stage(
                    root, f"{name}/merge", models, start.checkpoint, method,
                    (*flags, *(("--align_experts",) if align else ())), in_process, depends,
                )  # fmt: skip
                plans.append(_arm(
                    experiment, scale, root, arm, run.role,
                    {"family": family, "arm": "merged", "method": method, "aligned": align},
                    checkpoint=out, depends=(merge.name,), stages=(merge,),
                    in_process=in_process,
                ))  # fmt: skip
    return plans


def _plan_proxy(experiment, scale, root, starts, in_process):
    large, small = experiment.runs
    big, little = starts[large.role], starts[small.role]
    big_it, big_dir = _train(scale, large, root, "large_dense/instruction_tune", start=big,
                             task=INSTRUCTION_MIXTURE, in_process=in_process)  # fmt: skip
    small_it, small_dir = _train(scale, small, root, "small_switch/instruction_tune",
                                 start=little, task=INSTRUCTION_MIXTURE,
                                 in_process=in_process)  # fmt: skip
    base_dir, anti_dir = Path(big.checkpoint), Path(little.checkpoint)
    arm = lambda label, side, model, **kw: _arm(
        experiment, scale, root, label, model.role, {"role": side}, in_process=in_process, **kw
    )
    proxy = f"--proxy=base={base_dir},expert={small_dir},antiexpert={anti_dir}"
    return [
        arm("large dense, untuned (base)", "base", large, checkpoint=base_dir,
            depends=big.depends_on, stages=big.stages),
        arm("large dense, instruction-tuned (tuned)", "tuned", large, checkpoint=big_dir,
            depends=(big_it.name,), stages=(big_it,)),
        arm("small Switch, untuned (anti-expert)", "antiexpert", small, checkpoint=anti_dir,
            depends=little.depends_on, stages=little.stages),
        arm("small Switch, instruction-tuned (expert)", "expert", small, checkpoint=small_dir,
            depends=(small_it.name,), stages=(small_it,)),
        arm("large dense proxy-tuned by the small Switch pair (alpha 1)", "proxy", large,
            checkpoint=base_dir, flags=(proxy, "--proxy_alpha=1.0"),
            depends=(*big.depends_on, *little.depends_on, small_it.name)),
    ]  # fmt: skip


def plan_experiment(
    experiment: Experiment, scale: Scale, root: Path, *, in_process: bool = False
) -> list:
    """Every arm's stages (``runner.RunPlan``s); pre-training comes with the first arm."""
    from flan_moe.experiments import runner

    starts = runner.plan_starting_points(experiment, scale, root, in_process=in_process)
    planner = {
        "ablation_weight_averaging": _plan_weight_averaging,
        "ablation_merging": _plan_merging,
        "ablation_proxy_tuning": _plan_proxy,
    }[experiment.name]
    return planner(experiment, scale, root, starts, in_process)


# ------------------------------------------------------------------------------- report


def build_report(
    experiment: Experiment, scale: Scale, plans: Sequence[Any], root: Path, *, stale_runs=()
) -> dict[str, Path]:
    """Every arm with its interval, the stated paired differences (and the gap closed)."""
    from flan_moe.experiments import merging_report, runner

    runs = [
        report.Run(
            label=p.run.label + (" (stale)" if p.run.label in stale_runs else ""),
            results_files=runner.results_files(p.final_model_dir),
            attributes=dict(p.run.attributes),
        )
        for p in plans
    ]
    out = root / "report"
    selection = report.Selection(split="val", subsample=scale.eval_subsample)
    title = f"{experiment.title} — zero-shot, direct ({scale.name} scale)"
    tables = merging_report.tables(experiment.name, runs, title=title, selection=selection)
    notes = (
        f"Background: {experiment.paper_result}.",
        f"Scale {scale.name}: instruction tuning {scale.instruction_tune_steps} steps, batch "
        f"{scale.batch_size}, lengths {dict(scale.feature_lengths)}, eval subsample "
        f"{scale.eval_subsample or 'all'} per subtask.",
        runner.starting_point_note(experiment, scale),
        merging_report.NOTES[experiment.name],
    )
    if stale_runs:
        notes += (f"STALE (kept with --keep-stale): {', '.join(stale_runs)}.",)
    return report.write_report(report.Report(experiment.title, tuple(tables), (), tuple(runs),
                                             notes), out)  # fmt: skip
