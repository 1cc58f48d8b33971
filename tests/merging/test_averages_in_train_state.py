"""EMA / SWA kept in the optimizer state: decay 0 == raw weights, SWA == the mean of the
params after each update, resume reproduces them bit-exactly, eval loads them."""

import jax
import numpy as np
import pytest

from flan_moe import partitioning
from flan_moe.merging import averaging
from flan_moe.model.config import get_config
from flan_moe.training.loop import TrainConfig, train
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.synthetic import synthetic_batch, synthetic_batches
from flan_moe.training.trainer import TRAINER_CACHE

LENGTHS = {"inputs": 12, "targets": 6}
CONFIG = get_config("tiny", dtype="float32")
OPT = OptimizerConfig(name="adamw", learning_rate=1e-2, ema_decay=0.0, swa_start=1)


@pytest.fixture(scope="module")
def trainer():
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    return TRAINER_CACHE.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=mesh)


def test_ema_decay_zero_is_raw_and_swa_is_the_mean(trainer):
    state = trainer.init(0)
    after = []
    for step in range(3):
        batch = synthetic_batch(step=step, batch_size=4, feature_lengths=LENGTHS, vocab_size=512)
        state, _ = trainer.train_step(state, batch)
        after.append(jax.device_get(state.params))
    ema, swa = jax.device_get(state.opt_state.ema), jax.device_get(state.opt_state.swa)
    jax.tree_util.tree_map(np.testing.assert_array_equal, ema, after[-1])
    mean = jax.tree_util.tree_map(lambda *xs: np.mean(xs, axis=0), *after)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), swa, mean
    )
    assert int(state.opt_state.swa_count) == 3


def _run(trainer, model_dir, steps):
    def factory(start):
        return synthetic_batches(
            batch_size=4, feature_lengths=LENGTHS, vocab_size=512, start_step=start
        )

    train(
        model_config=CONFIG,
        train_config=TrainConfig(train_steps=steps, batch_size=4, checkpoint_every=2),
        optimizer_config=OPT,
        iterator_factory=factory,
        model_dir=str(model_dir),
        trainer=trainer,
    )


def test_resume_reproduces_averages_bit_exactly_and_eval_loads_them(trainer, tmp_path):
    _run(trainer, tmp_path / "straight", 4)
    _run(trainer, tmp_path / "resumed", 2)
    _run(trainer, tmp_path / "resumed", 4)
    for which in ("raw", "ema", "swa"):
        a, _, _ = averaging.load_weights(str(tmp_path / "straight"), which)
        b, _, _ = averaging.load_weights(str(tmp_path / "resumed"), which)
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    raw, _, _ = averaging.load_weights(str(tmp_path / "straight"), "raw")
    swa, _, _ = averaging.load_weights(str(tmp_path / "straight"), "swa")
    assert not np.array_equal(
        raw["decoder"]["layers_0"]["mlp"]["wo"], swa["decoder"]["layers_0"]["mlp"]["wo"]
    )


def test_lawa_weights_average_the_checkpoints_up_to_this_one(trainer, tmp_path):
    from flan_moe.merging import soups
    from flan_moe.training.checkpoints import load_params

    _run(trainer, tmp_path / "run", 6)  # checkpoints 2, 4, 6
    got, _, _ = averaging.load_weights(str(tmp_path / "run" / "checkpoint_4"), "lawa_2")
    want = soups.uniform(
        [load_params(str(tmp_path / "run" / f"checkpoint_{s}"))[0] for s in (2, 4)]
    )
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, want)
    with pytest.raises(ValueError, match="needs 3 checkpoints"):
        averaging.load_weights(str(tmp_path / "run" / "checkpoint_4"), "lawa_3")
    with pytest.raises(ValueError, match="lawa_<k>"):
        averaging.load_weights(str(tmp_path / "run"), "best")
