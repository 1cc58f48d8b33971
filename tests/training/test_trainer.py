"""Compiled train steps: gradient accumulation, sharding, freezing, NaN stop."""

import jax
import numpy as np
import pytest

from flan_moe import partitioning
from flan_moe.model.config import get_config
from flan_moe.training.loop import NonFiniteLossError, TrainConfig, train
from flan_moe.training.optimizers import OptimizerConfig, path_str
from flan_moe.training.synthetic import synthetic_batch, synthetic_batches
from flan_moe.training.trainer import TRAINER_CACHE, Trainer

LENGTHS = {"inputs": 12, "targets": 6}
CONFIG = get_config("tiny", dtype="float32")  # dropout 0: steps are deterministic
OPT = OptimizerConfig(name="adamw", learning_rate=1e-3)


def _batch(step=0, batch_size=8):
    return synthetic_batch(
        step=step, batch_size=batch_size, feature_lengths=LENGTHS, vocab_size=CONFIG.vocab_size
    )


def _one_device():
    return partitioning.make_mesh(data=1, devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def single():
    return TRAINER_CACHE.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=_one_device())


def _grads(trainer, params, batch):
    with partitioning.axis_rules(trainer.mesh):
        loss, parts, grads = jax.jit(trainer._grads)(
            params, trainer.shard(batch), jax.random.PRNGKey(0)
        )
    return float(loss), jax.device_get(grads)


def _assert_trees_close(a, b, rtol, atol):
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b), strict=True
    ):
        np.testing.assert_allclose(
            np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, err_msg=path_str(path)
        )


def test_gradient_accumulation_equals_full_batch(single):
    accumulate = Trainer(
        model_config=CONFIG, optimizer_config=OPT, mesh=_one_device(), num_microbatches=4
    )
    params = single.init(0).params
    batch = _batch()
    loss_full, grads_full = _grads(single, params, batch)
    loss_acc, grads_acc = _grads(accumulate, params, batch)
    np.testing.assert_allclose(loss_acc, loss_full, rtol=1e-5)
    _assert_trees_close(grads_acc, grads_full, rtol=1e-4, atol=1e-6)


def test_sharded_train_step_equals_one_device(single):
    sharded = Trainer(
        model_config=CONFIG,
        optimizer_config=OPT,
        mesh=partitioning.make_mesh(data=2, expert=2, model=2),
    )
    states = {}
    for name, trainer in (("one", single), ("mesh", sharded)):
        state = trainer.init(0)
        metrics = []
        for step in range(2):
            state, m = trainer.train_step(state, _batch(step))
            metrics.append(jax.device_get(m))
        states[name] = (jax.device_get(state.params), metrics)
    # Params are laid out on the mesh by their logical axes.
    mesh_state = sharded.init(0)
    wi = mesh_state.params["encoder"]["layers_0"]["mlp"]["wi_0"]
    assert wi.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    for m_one, m_mesh in zip(states["one"][1], states["mesh"][1], strict=True):
        np.testing.assert_allclose(m_mesh["loss"], m_one["loss"], rtol=1e-5)
        np.testing.assert_allclose(m_mesh["grad_norm"], m_one["grad_norm"], rtol=1e-4)
    _assert_trees_close(states["mesh"][0], states["one"][0], rtol=1e-4, atol=1e-5)


def test_frozen_params_stay_bit_identical_and_have_no_state():
    freeze = "regex:^encoder/|^token_embedder/"
    trainer = Trainer(
        model_config=CONFIG,
        optimizer_config=OptimizerConfig(name="adafactor", learning_rate=1e-2, freeze=freeze),
        mesh=_one_device(),
    )
    state = trainer.init(0)
    before = jax.device_get(state.params)
    opt_paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    for step in range(3):
        state, _ = trainer.train_step(state, _batch(step))
    after = jax.device_get(state.params)
    for path, value in jax.tree_util.tree_leaves_with_path(after):
        name = path_str(path)
        old = before
        for key in name.split("/"):
            old = old[key]
        if name.startswith(("encoder/", "token_embedder/")):
            assert np.array_equal(value, old), f"frozen {name} moved"
            assert not any(p.endswith(name) or f"/{name}/" in f"/{p}/" for p in opt_paths), name
        elif name.endswith("rel_embedding") or "norm" in name:
            continue  # may get tiny or zero updates; moved-ness is checked on matrices
        else:
            assert not np.array_equal(value, old), f"trainable {name} did not move"
    assert any("decoder/layers_0/mlp/wo" in p for p in opt_paths)


def test_nonfinite_loss_stops_with_step_and_last_checkpoint(single, tmp_path):
    def factory(start):
        for index, batch in enumerate(
            synthetic_batches(batch_size=8, feature_lengths=LENGTHS, vocab_size=512),
            start=start,
        ):
            if index == 2:  # the third batch (step 3) has a NaN weight
                batch["decoder_loss_weights"][0, 0] = np.nan
            yield batch

    with pytest.raises(NonFiniteLossError, match=r"at step 3.*checkpoint_2"):
        train(
            model_config=CONFIG,
            train_config=TrainConfig(train_steps=5, batch_size=8, checkpoint_every=1),
            optimizer_config=OPT,
            iterator_factory=factory,
            model_dir=str(tmp_path),
            trainer=single,
        )
    names = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint_"))
    assert names == ["checkpoint_1", "checkpoint_2"]  # nothing saved after the NaN


def test_freeze_gate_on_a_switch_model_trains_experts_not_routers():
    pytest.importorskip("flan_moe.model.moe")
    from flan_moe.model.config import SIZES

    if "switch_tiny_8" not in SIZES:
        pytest.skip("switch_tiny_8 is not in the size table yet")
    base = get_config("switch_tiny_8", dtype="float32")
    config = base.replace(moe=base.moe.replace(expert_dropout_rate=0.0))
    trainer = Trainer(
        model_config=config,
        optimizer_config=OptimizerConfig(name="adafactor", learning_rate=1e-2, freeze="gate"),
        mesh=_one_device(),
    )
    state = trainer.init(0)
    before = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        jax.device_get(state.params))}  # fmt: skip
    opt_paths = [path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(state.opt_state)]
    for step in range(2):
        state, metrics = trainer.train_step(state, _batch(step))
    after = {path_str(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(
        jax.device_get(state.params))}  # fmt: skip
    routers = [n for n in after if "/moe/" in n and "router" in n]
    experts = [n for n in after if "/moe/" in n and "expert" in n]
    assert routers and experts
    for name in routers:
        assert np.array_equal(after[name], before[name]), name
        assert not any(name in p for p in opt_paths), name
    for name in experts:
        assert not np.array_equal(after[name], before[name]), name
    assert np.isfinite(float(metrics["load_balancing_loss"]))
    assert float(metrics["load_balancing_loss"]) > 0


def test_constructor_builds_and_the_named_cache_reuses_by_documented_key():
    from flan_moe.models import LossConfig
    from flan_moe.training.trainer import TrainerCache

    mesh = _one_device()
    assert Trainer(model_config=CONFIG, optimizer_config=OPT, mesh=mesh) is not Trainer(
        model_config=CONFIG, optimizer_config=OPT, mesh=mesh
    )
    cache = TrainerCache(maxsize=1)
    first = cache.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=mesh)
    # The defaults are part of the key: spelling them out finds the same trainer.
    same = cache.get_or_build(
        model_config=CONFIG,
        optimizer_config=OPT,
        loss_config=LossConfig(),
        mesh=_one_device(),
        num_microbatches=1,
    )
    assert same is first and len(cache) == 1
    assert cache.key_of(model_config=CONFIG, optimizer_config=OPT, mesh=mesh) == (
        CONFIG, OPT, LossConfig(), mesh, 1
    )  # fmt: skip
    other = cache.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=mesh,
                               num_microbatches=2)  # fmt: skip
    assert other is not first and other.num_microbatches == 2
    assert len(cache) == 1  # maxsize 1: the least recently used one was evicted
    assert cache.get_or_build(model_config=CONFIG, optimizer_config=OPT, mesh=mesh) is not first
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="maxsize"):
        TrainerCache(maxsize=0)
