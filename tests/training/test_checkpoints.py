"""Checkpoints: exact resume, signals, the evaluator's reading contract, mismatch errors."""

import os
import signal

import jax
import numpy as np
import pytest

from flan_moe import partitioning
from flan_moe.model.config import get_config
from flan_moe.training.checkpoints import (
    CheckpointMismatchError,
    list_checkpoints,
    load_params,
    restore_params,
)
from flan_moe.training.loop import TrainConfig, train
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.synthetic import synthetic_batches
from flan_moe.training.trainer import TRAINER_CACHE

LENGTHS = {"inputs": 12, "targets": 6}
# Dropout on, so the resumed run must also continue the RNG stream.
CONFIG = get_config("tiny", dtype="float32", dropout_rate=0.1)
OPT = OptimizerConfig(name="adafactor", schedule="rsqrt", learning_rate=0.1, warmup_steps=2)
META = {"vocabulary": "byte", "task_feature_lengths": LENGTHS}


def _factory(start):
    return synthetic_batches(
        batch_size=8, feature_lengths=LENGTHS, vocab_size=259, seed=3, start_step=start
    )


@pytest.fixture(scope="module")
def trainer():
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    return TRAINER_CACHE.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=mesh)


def _train(trainer, model_dir, steps, *, log_every=50, **kwargs):
    config = TrainConfig(
        train_steps=steps, batch_size=8, checkpoint_every=2, log_every=log_every, seed=7
    )
    return train(
        model_config=CONFIG,
        train_config=config,
        optimizer_config=OPT,
        iterator_factory=_factory,
        model_dir=str(model_dir),
        trainer=trainer,
        run_metadata=META,
        **kwargs,
    )


@pytest.fixture(scope="module")
def uninterrupted(trainer, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("full")
    result = _train(trainer, model_dir, 5)
    return model_dir, jax.device_get(result.state.params)


def _assert_bitwise_equal(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_interrupted_then_resumed_equals_uninterrupted(trainer, uninterrupted, tmp_path):
    _, full_params = uninterrupted
    first = _train(trainer, tmp_path, 5, stop_after=3)  # killed after step 3 (saved on stop)
    assert first.end_step == 3
    assert first.stopped and first.stop_message() == "stopped at step 3 of 5; re-run to continue"
    second = _train(trainer, tmp_path, 5)  # TRAIN_STEPS is the absolute target step
    assert (second.start_step, second.end_step) == (3, 5) and not second.stopped
    _assert_bitwise_equal(jax.device_get(second.state.params), full_params)


def test_sigterm_saves_a_checkpoint_and_stops(trainer, tmp_path):
    def factory(start):
        for index, batch in enumerate(_factory(start), start=start):
            if index == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 2 is prepared
            yield batch

    result = train(
        model_config=CONFIG,
        train_config=TrainConfig(train_steps=10, batch_size=8, checkpoint_every=100),
        optimizer_config=OPT,
        iterator_factory=factory,
        model_dir=str(tmp_path),
        trainer=trainer,
        run_metadata=META,
    )
    assert result.stopped_by_signal and result.end_step == 2
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [2]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_list_checkpoints_and_load_params_contract(uninterrupted):
    model_dir, full_params = uninterrupted
    # A half-written checkpoint (orbax's temporary name) is never listed.
    os.makedirs(model_dir / "checkpoint_9.orbax-checkpoint-tmp-123" / "params", exist_ok=True)
    listed = list_checkpoints(str(model_dir))
    assert [s for s, _ in listed] == [2, 4, 5]
    assert listed[-1][1] == str(model_dir / "checkpoint_5")
    params, config, metadata = load_params(str(model_dir))
    assert config == CONFIG
    assert metadata["step"] == 5 and metadata["vocabulary"] == "byte"
    assert metadata["task_feature_lengths"] == LENGTHS
    assert metadata["model_config"] == CONFIG.to_dict()
    assert all(x.dtype == np.float32 for x in jax.tree_util.tree_leaves(params))
    _assert_bitwise_equal(params, full_params)
    older, _, meta2 = load_params(listed[0][1])
    assert meta2["step"] == 2
    assert not np.array_equal(
        np.asarray(older["decoder"]["logits_dense"]), np.asarray(params["decoder"]["logits_dense"])
    )


def test_loading_into_an_incompatible_model_lists_mismatches(uninterrupted):
    model_dir, _ = uninterrupted
    from flan_moe.training.checkpoints import abstract_params_for

    other = abstract_params_for(get_config("tiny", d_ff=96, num_decoder_layers=3))
    with pytest.raises(CheckpointMismatchError) as info:
        restore_params(str(model_dir), other)
    message = str(info.value)
    assert "encoder/layers_0/mlp/wi_0: checkpoint (32, 64) != model (32, 96)" in message
    assert "decoder/layers_2/mlp/wo: missing in checkpoint" in message


def test_initial_checkpoint_starts_a_new_run_from_its_params(trainer, uninterrupted, tmp_path):
    model_dir, full_params = uninterrupted
    result = _train(trainer, tmp_path, 0, initial_checkpoint_path=str(model_dir / "checkpoint_5"))
    assert result.start_step == 0
    _assert_bitwise_equal(jax.device_get(result.state.params), full_params)
