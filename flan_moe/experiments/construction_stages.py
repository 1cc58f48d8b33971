"""Stages that build a run's initial checkpoint from a dense model (``ablation_moe_init``).

A ``ModelRun`` with a ``construction`` goes through::

    pretrain/dense                   (shared by every such run: the pre-trained dense
      or dense_source/train           model where the scale pre-trains; otherwise the
                                      dense model trained for the scale's instruction-
                                      tuning steps on the FLAN mix, standing in for one)
    <run>/construct                  python -m flan_moe.cli.construct --recipe_json=...
    <run>/instruction_tune_router_frozen   (optional: the first steps with the routers
                                      frozen, OptimizerConfig.freeze="gate")
    <run>/instruction_tune           the remaining steps, from the stage before

so every arm gets the same instruction-tuning budget after its initial checkpoint. The
training stages load the constructed checkpoint through INITIAL_CHECKPOINT_PATH (fresh
optimizer state, t5x semantics) with MODEL_OVERRIDES set to the constructed MoE config.
A construction without a recipe starts from the dense source itself (the dense
"continued training" arm).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flan_moe.construction.recipes import moe_config_for, recipe_to_dict
from flan_moe.experiments import pipeline
from flan_moe.experiments.settings import INSTRUCTION_MIXTURE, ModelRun, Scale
from flan_moe.model.config import get_config

if TYPE_CHECKING:
    from flan_moe.experiments.runner import StartingPoint

SOURCE_STAGE = "dense_source/train"


def moe_overrides(scale: Scale, recipe) -> dict:
    """MODEL_OVERRIDES giving the MoE config ``recipe`` builds from the scale's dense model."""
    return moe_config_for(get_config(scale.models["dense"]), recipe).to_dict()


def _source_stage(scale: Scale, root: Path, in_process: bool) -> tuple[pipeline.Stage, Path]:
    from flan_moe.experiments import runner

    model_dir = pipeline.stage_dir(root, SOURCE_STAGE) / "model"
    source = ModelRun("dense source", "dense")
    command = runner._train_command(
        scale, source, model_dir=model_dir, task=INSTRUCTION_MIXTURE,
        steps=scale.instruction_tune_steps, initial_checkpoint=None,
        run_gin="instruction_tune.gin",
    )  # fmt: skip
    return runner._stage(SOURCE_STAGE, command, (), in_process), model_dir


def plan_construction(
    scale: Scale,
    run: ModelRun,
    root: Path,
    *,
    in_process: bool,
    source: StartingPoint | None = None,
) -> tuple[list[pipeline.Stage], Path, ModelRun]:
    """(stages before instruction tuning, its INITIAL_CHECKPOINT_PATH, the run to train).

    ``source``: the dense role's starting point; where it is a checkpoint (the pre-trained
    dense model at tiny/small scale) it is the dense source, else ``dense_source/train``.
    """
    from flan_moe.experiments import runner

    construction = run.construction
    assert construction is not None
    name = runner.slug(run.label)
    if source is not None and source.checkpoint is not None:
        stages, source_dir = list(source.stages), Path(source.checkpoint)
        source_deps = source.depends_on
    else:
        stage, source_dir = _source_stage(scale, root, in_process)
        stages, source_deps = [stage], (SOURCE_STAGE,)
    init = source_dir
    if construction.recipe is not None:
        init = pipeline.stage_dir(root, f"{name}/construct") / "model"
        recipe_json = json.dumps(recipe_to_dict(construction.recipe))
        command = (
            sys.executable, "-m", "flan_moe.cli.construct", f"--checkpoint={source_dir}",
            f"--output_dir={init}", f"--recipe_json={recipe_json}", *construction.flags,
        )  # fmt: skip
        stages.append(runner._stage(f"{name}/construct", command, source_deps, in_process))
        overrides = (("MODEL_OVERRIDES", moe_overrides(scale, construction.recipe)),)
        run = dataclasses.replace(run, bindings=(*run.bindings, *overrides))
    total = max(1, round(scale.instruction_tune_steps * run.step_fraction))
    frozen = round(total * construction.freeze_router_fraction)
    if frozen:
        stage = f"{name}/instruction_tune_router_frozen"
        model_dir = pipeline.stage_dir(root, stage) / "model"
        frozen_run = dataclasses.replace(
            run, bindings=(*run.bindings, ("OptimizerConfig.freeze", "gate"))
        )
        command = runner._train_command(
            scale, frozen_run, model_dir=model_dir, task=INSTRUCTION_MIXTURE, steps=frozen,
            initial_checkpoint=init, run_gin="instruction_tune.gin",
        )  # fmt: skip
        stages.append(runner._stage(stage, command, (stages[-1].name,), in_process))
        init = model_dir
        remaining = (total - frozen) / scale.instruction_tune_steps
        run = dataclasses.replace(run, step_fraction=remaining)
    return stages, init, run


def dedupe_shared_stages(stages_per_plan: list[tuple[pipeline.Stage, ...]]) -> list[tuple]:
    """Each plan's stages without those an earlier plan already has (the shared source)."""
    seen: set[str] = set()
    out = []
    for stages in stages_per_plan:
        out.append(tuple(s for s in stages if s.name not in seen))
        seen.update(s.name for s in stages)
    return out
