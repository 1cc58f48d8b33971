"""Training integrity: manifests and the fallback to the latest good checkpoint, NaN/Inf
in the gradient norm, the MODEL_DIR lock, metrics deduplicated on resume."""

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flan_moe import partitioning
from flan_moe.training import integrity
from flan_moe.training.checkpoints import Checkpointer, latest_checkpoint, load_params
from flan_moe.training.integrity import CheckpointDamagedError
from flan_moe.training.loop import NonFiniteLossError
from flan_moe.training.model_dir_lock import ModelDirLockedError, model_dir_lock
from flan_moe.training.trainer import TRAINER_CACHE
from tests.training.test_checkpoints import CONFIG, OPT, _assert_bitwise_equal, _factory
from tests.training.test_checkpoints import _train as train_for_checkpoints


@pytest.fixture(scope="module")
def trainer():
    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    return TRAINER_CACHE.get_or_build(
        model_config=CONFIG, optimizer_config=OPT, mesh=mesh
    )  # shared


def _train(trainer, model_dir, steps, **kwargs):
    return train_for_checkpoints(trainer, model_dir, steps, log_every=1, **kwargs)


@pytest.fixture(scope="module")
def reference(trainer, tmp_path_factory):
    """An uninterrupted run to step 6 (checkpoints at 2, 4, 6) and its final params."""
    model_dir = tmp_path_factory.mktemp("reference")
    result = _train(trainer, model_dir, 6)
    return model_dir, jax.device_get(result.state.params)


@pytest.fixture
def flan_log(caplog):
    """The ``flan_moe`` loggers' records at INFO, even when the CLI stopped propagation."""
    logger = logging.getLogger("flan_moe")
    old_level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(old_level)


def _params_file(checkpoint: str) -> str:
    """The largest file under params/ (array data)."""
    files = [
        os.path.join(r, n) for r, _, ns in os.walk(os.path.join(checkpoint, "params")) for n in ns
    ]
    return max(files, key=os.path.getsize)


def _flip_one_byte(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        value = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([value ^ 0x01]))


def test_every_checkpoint_has_a_manifest_that_verifies(reference):
    model_dir, _ = reference
    for step in (2, 4, 6):
        path = str(model_dir / f"checkpoint_{step}")
        manifest = integrity.read_manifest(path)
        assert manifest["step"] == step and "params/_METADATA" in manifest["files"]
        assert integrity.verify_checkpoint(path, level="full") is True


def test_one_flipped_byte_is_named_and_the_previous_checkpoint_is_used(
    trainer, reference, tmp_path, flan_log
):
    caplog = flan_log
    model_dir, full_params = reference
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    damaged = str(copy / "checkpoint_6")
    flipped = _params_file(damaged)
    _flip_one_byte(flipped)
    rel = os.path.relpath(flipped, damaged)
    with pytest.raises(CheckpointDamagedError, match=rf"checkpoint {damaged} is damaged.*{rel}"):
        integrity.verify_checkpoint(damaged)
    integrity.verify_checkpoint(damaged, level="sizes")  # the cheap check cannot see a flip
    with pytest.raises(CheckpointDamagedError, match="checksum differs"):
        load_params(damaged)

    # Evaluation of the MODEL_DIR: a named warning, then the previous good checkpoint.
    warnings: list[str] = []
    assert latest_checkpoint(str(copy), warn=warnings.append) == (4, str(copy / "checkpoint_4"))
    assert len(warnings) == 1 and damaged in warnings[0] and "previous" in warnings[0]
    _, _, metadata = load_params(str(copy))
    assert metadata["step"] == 4 and damaged in caplog.text

    # Training: warns, moves it aside, resumes from step 4 and ends at the planned step 6
    # with exactly the uninterrupted run's params.
    caplog.clear()
    result = _train(trainer, copy, 6)
    assert (result.start_step, result.end_step) == (4, 6)
    assert damaged in caplog.text and os.path.isdir(damaged + ".damaged")
    _assert_bitwise_equal(jax.device_get(result.state.params), full_params)
    assert integrity.verify_checkpoint(damaged) is True  # rewritten, with a new manifest


def test_an_empty_or_half_copied_latest_checkpoint_is_incomplete(reference, tmp_path):
    model_dir, _ = reference
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    os.makedirs(copy / "checkpoint_44")  # empty folder
    os.remove(copy / "checkpoint_6" / "params" / "_METADATA")
    warnings: list[str] = []
    assert latest_checkpoint(str(copy), level="sizes", warn=warnings.append)[0] == 4
    assert "checkpoint_44 is incomplete: missing params/_METADATA" in warnings[0]
    assert "checkpoint_6 is incomplete: missing params/_METADATA" in warnings[1]


def test_a_truncated_file_is_caught_by_the_cheap_latest_only_check(reference, tmp_path):
    model_dir, _ = reference
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(model_dir, copy)
    with open(_params_file(str(copy / "checkpoint_6")), "r+b") as f:
        f.truncate(3)
    from flan_moe.cli import eval as eval_cli

    args = eval_cli.build_parser().parse_args(
        [f"--checkpoint_dir={copy}", "--latest_only", "--suites=mmlu"]
    )
    targets, _ = eval_cli.find_targets(args)
    assert [t.step for t in targets] == [4]


class _PoisonedTrainer:
    """Delegates to a real trainer; at ``bad_step`` the update is NaN while the loss (computed
    before the update) stays finite and only the gradient norm shows it."""

    def __init__(self, trainer, bad_step):
        self.inner, self.bad_step = trainer, bad_step

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def train_step(self, state, batch):
        state, metrics = self.inner.train_step(state, batch)
        if int(state.step) == self.bad_step:
            params = jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params)
            state = state.replace(params=params)
            metrics = {**metrics, "grad_norm": jnp.float32(np.nan)}
        return state, metrics


def test_nan_gradient_norm_with_a_finite_loss_is_never_checkpointed(trainer, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"grad_norm is nan at step 4.*checkpoint_2"):
        _train(_PoisonedTrainer(trainer, 4), tmp_path, 6)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint_"))
    assert names == ["checkpoint_2"]  # step 4 (a checkpoint step) was not saved


def test_a_checkpoint_with_nan_params_is_refused_on_resume(trainer, tmp_path):
    state = trainer.init(0)
    bad = jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params)
    state = state.replace(params=bad)
    checkpointer = Checkpointer(str(tmp_path))
    checkpointer.save(state, data_position=0, metadata={"model_config": {}})
    checkpointer.close()
    with pytest.raises(NonFiniteLossError, match=r"checkpoint_0: params contain NaN/Inf"):
        _train(trainer, tmp_path, 2)


def test_a_second_writer_gets_an_error_naming_the_holder(trainer, tmp_path):
    with (
        model_dir_lock(str(tmp_path)),
        pytest.raises(
            ModelDirLockedError, match=rf"in use by another trainer \(pid {os.getpid()} "
        ),
    ):
        _train(trainer, tmp_path, 2)
    assert _train(trainer, tmp_path, 0).end_step == 0  # released


def test_metrics_of_replayed_steps_are_logged_once(trainer, tmp_path, flan_log):
    first = _train(trainer, tmp_path, 6, stop_after=3)  # logs steps 1-3, saves step 3
    assert first.end_step == 3
    metrics = tmp_path / "train" / "metrics.jsonl"
    with open(metrics, "a") as f:  # a run killed after logging steps past its checkpoint
        for step in (4, 5):
            f.write(json.dumps({"step": step, "loss": 99.0}) + "\n")
    _train(trainer, tmp_path, 6)
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    # "committed" is logged once the checkpoint and its manifest are on disk.
    assert f"checkpoint at step 6 committed: {tmp_path / 'checkpoint_6'}" in flan_log.text
    assert all(json.loads(line)["loss"] != 99.0 for line in metrics.read_text().splitlines())


def test_a_step_with_a_nan_loss_does_not_apply_its_update(trainer):
    state = trainer.init(0)
    batch = next(_factory(0))
    batch["decoder_loss_weights"] = batch["decoder_loss_weights"].astype(np.float32)
    batch["decoder_loss_weights"][0, 0] = np.nan
    before = jax.device_get((state.params, state.opt_state))  # the step donates state
    new_state, metrics = trainer.train_step(state, batch)
    assert not np.isfinite(float(metrics["loss"]))
    assert int(new_state.step) == 1
    _assert_bitwise_equal(jax.device_get((new_state.params, new_state.opt_state)), before)
