"""Every ablation arm trains differently from its baseline arm.

Each run of each registered ablation is built at tiny scale exactly as the experiment
runner launches it (its ``flan_moe.cli.train`` command line: model gin file, run gin
file, the run's bindings), then trained from the same initial params on the same fixed
batch. An arm whose loss equals its baseline's changes nothing and fails here.
"""

import gin
import numpy as np
import pytest

from flan_moe.cli import train as train_cli
from flan_moe.cli.gin_flags import parse_gin, query_macro, split_gin_flags
from flan_moe.experiments import runner, settings
from flan_moe.training.synthetic import synthetic_batch
from flan_moe.training.trainer import Trainer

SCALE = settings.get_scale("tiny")
STEPS = 4  # updates of a full-length run; a run with step_fraction f makes round(4 f)
LENGTHS = {"inputs": 16, "targets": 8}


def _configs(experiment, run, tmp_path):
    """(model, optimizer, loss configs, steps) of the run's training stage."""
    plan = runner.plan_run(experiment, SCALE, run, tmp_path)
    command = plan.stages[0].command
    assert command[2] == "flan_moe.cli.train"
    flags, rest = split_gin_flags(command[3:])
    assert not rest
    gin.clear_config()
    try:
        parse_gin(flags)
        model = train_cli.resolve_model_config(
            str(query_macro("MODEL_NAME")),
            query_macro("MODEL_OVERRIDES", None),
            query_macro("RUN_MODEL_OVERRIDES", None),
        )
        optimizer = train_cli.GinOptimizerConfig()
        loss = train_cli.GinLossConfig()
        steps = int(query_macro("TRAIN_STEPS"))
    finally:
        gin.clear_config()
    return model, optimizer, loss, max(1, round(STEPS * steps / SCALE.instruction_tune_steps))


def _trained_loss(model, optimizer, loss, steps):
    trainer = Trainer(model_config=model, optimizer_config=optimizer, loss_config=loss)
    batch = synthetic_batch(
        batch_size=8, feature_lengths=LENGTHS, vocab_size=model.vocab_size, seed=0, step=0
    )
    state = trainer.init(seed=0)
    for _ in range(steps):
        state, metrics = trainer.train_step(state, batch)
    return float(metrics["loss"])


def _assert_arms_differ(name, tmp_path):
    experiment = settings.get_experiment(name, SCALE)
    assert experiment.baseline is not None
    losses = {}
    for run in experiment.runs:
        losses[run.label] = _trained_loss(*_configs(experiment, run, tmp_path))
    assert all(np.isfinite(v) for v in losses.values()), losses
    base = losses[experiment.baseline]
    same = [label for label, v in losses.items() if label != experiment.baseline and v == base]
    assert not same, f"{name}: arms {same} train exactly like the baseline ({losses})"
    return losses


def test_ablation_losses_arms_all_differ(tmp_path):
    losses = _assert_arms_differ("ablation_losses", tmp_path)
    assert len(losses) == 4 and len(set(losses.values())) == 4, losses


ABLATIONS = sorted(
    name
    for name in settings.EXPERIMENTS
    if settings.get_experiment(name, SCALE).baseline and name != "ablation_losses"
)


@pytest.mark.slow
@pytest.mark.parametrize("name", ABLATIONS)
def test_every_ablation_arm_differs_from_its_baseline(name, tmp_path):
    _assert_arms_differ(name, tmp_path)
