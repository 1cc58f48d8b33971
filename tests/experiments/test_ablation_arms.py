"""Every ablation arm trains differently from its baseline arm.

Each run of each registered ablation is built at tiny scale exactly as the experiment
runner launches it (its ``flan_moe.cli.train`` command line: model gin file, run gin
file, the run's bindings), then trained from the same initial params on the same fixed
batch. An arm whose loss equals its baseline's changes nothing and fails here.
"""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe.cli import train as train_cli
from flan_moe.cli.gin_flags import parse_gin, query_macro, split_gin_flags
from flan_moe.experiments import runner, settings
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.models import loss_fn
from flan_moe.training.optimizers import make_optimizer
from flan_moe.training.synthetic import synthetic_batch
from flan_moe.training.train_state import logical_param_axes
from tests.random_params import random_params

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


def _trained_loss(model_config, optimizer_config, loss_config, steps):
    """The training loss at the last of ``steps`` updates (the run's optimizer, freeze
    mask, loss and dropout) from params drawn with seed 0, on one fixed batch."""
    model = EncoderDecoder(model_config)
    params = random_params(model, seed=0)
    dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy, dummy, dummy)
    _, axes = logical_param_axes(abstract)
    tx, _, trainable = make_optimizer(optimizer_config, params=params, param_axes=axes)
    batch = synthetic_batch(
        batch_size=4, feature_lengths=LENGTHS, vocab_size=model_config.vocab_size, seed=0, step=0
    )
    batch = {k: jnp.asarray(v) for k, v in batch.items()}

    @jax.jit
    def step(params, opt_state, rng):
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (loss, _), grads = grad_fn(
            params, batch, model=model, loss_config=loss_config, dropout_rng=rng,
            enable_dropout=True,
        )  # fmt: skip
        updates, opt_state = tx.update(grads, opt_state, params)
        params = jax.tree_util.tree_map(
            lambda t, p, u: p + u if t else p, trainable, params, updates
        )
        return params, opt_state, loss

    opt_state = tx.init(params)
    for i in range(steps):
        params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    return float(loss)


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


def test_ablation_losses_arms_have_four_different_losses_on_a_fixed_batch(tmp_path):
    """Fast: the loss of each arm's configs at the same params and batch (no training)."""
    experiment = settings.get_experiment("ablation_losses", SCALE)
    losses = {}
    for run in experiment.runs:
        model_config, _, loss_config, _ = _configs(experiment, run, tmp_path)
        model = EncoderDecoder(model_config)
        batch = synthetic_batch(batch_size=4, feature_lengths=LENGTHS,
                                vocab_size=model_config.vocab_size, seed=0, step=0)  # fmt: skip
        loss, _ = loss_fn(random_params(model, seed=0), batch, model=model, loss_config=loss_config)
        losses[run.label] = float(loss)
    assert len(losses) == 4 and len(set(losses.values())) == 4, losses


@pytest.mark.slow
def test_ablation_losses_arms_all_train_differently(tmp_path):
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
