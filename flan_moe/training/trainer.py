"""Train and eval steps compiled once with ``jax.jit`` over the device mesh.

``Trainer`` builds the model, the optimizer and the shardings of the train state
(params and optimizer state by their logical axes, the batch over the data and
expert mesh axes), and compiles:

* ``init(seed)`` / ``init_from_params(params, seed)``: a fresh TrainState;
* ``train_step(state, batch) -> (state, metrics)``: dropout on, gradients
  accumulated over ``num_microbatches`` microbatches with ``lax.scan`` (microbatch
  i holds rows i, i+m, i+2m, ... so each stays spread over the data shards), the
  loss normalised by the real target tokens of the whole batch, frozen params left
  bit-identical; a step whose loss or gradient norm is NaN/Inf is not applied;
* ``eval_step(params, batch) -> metrics``: no dropout.

Compute runs in the model config's ``dtype`` (bfloat16 by default) with float32
params and optimizer state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from functools import partial
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flan_moe import partitioning
from flan_moe.model.config import ModelConfig
from flan_moe.model.transformer import EncoderDecoder
from flan_moe.models import LossConfig, loss_fn, loss_weights, summarize_parts
from flan_moe.training.optimizers import OptimizerConfig, make_optimizer
from flan_moe.training.train_state import TrainState, logical_param_axes, state_shardings

Batch = dict[str, Any]
BATCH_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


def select_features(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The features the train step consumes (others, e.g. strings, stay on the host)."""
    return {k: v for k, v in batch.items() if k in BATCH_FEATURES}


@functools.lru_cache(maxsize=8)
def _param_initializer(config: ModelConfig, mesh: Mesh):
    """A compiled ``rng -> params`` (sharded by logical axes), shared by every Trainer
    of the same model shapes and mesh: initialisation does not depend on dropout."""
    shape_config = config.replace(dropout_rate=0.0)
    if shape_config.moe is not None:
        shape_config = shape_config.replace(
            moe=dataclasses.replace(shape_config.moe, expert_dropout_rate=0.0)
        )
    if shape_config != config:
        return _param_initializer(shape_config, mesh)
    model = EncoderDecoder(config)
    dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
    with partitioning.axis_rules(mesh):
        abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), dummy, dummy, dummy)
        shardings = nn.unbox(partitioning.params_shardings(abstract, mesh)["params"])

    def init(rng: jax.Array) -> Any:
        tokens = jnp.ones((1, 1), jnp.int32)
        return nn.unbox(model.init(rng, tokens, tokens, tokens)["params"])

    return jax.jit(init, out_shardings=shardings)


class Trainer:
    """Compiled train/eval steps for one model, optimizer and mesh.

    The constructor always builds (and later compiles) a new trainer; to reuse one
    built with the same arguments, use ``TRAINER_CACHE.get_or_build(...)``.
    """

    def __init__(
        self,
        *,
        model_config: ModelConfig,
        optimizer_config: OptimizerConfig,
        loss_config: LossConfig | None = None,
        mesh: Mesh | None = None,
        num_microbatches: int = 1,
    ) -> None:
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.model_config = model_config
        self.optimizer_config = optimizer_config
        self.loss_config = loss_config or LossConfig()
        self.mesh = mesh or partitioning.make_mesh(data=-1)
        self.num_microbatches = num_microbatches
        # Routing groups follow the mesh (a multiple of data x expert devices), so the
        # MoE layers run sharded; model_config itself stays as given.
        self.model = EncoderDecoder(partitioning.with_mesh_groups(model_config, self.mesh))

        dummy = jax.ShapeDtypeStruct((1, 1), jnp.int32)
        with partitioning.axis_rules(self.mesh):
            abstract_vars = jax.eval_shape(
                self.model.init, jax.random.PRNGKey(0), dummy, dummy, dummy
            )
        self.param_specs, self.param_axes = logical_param_axes(abstract_vars)
        abstract_params = nn.unbox(abstract_vars["params"])
        self.optimizer, self.schedule, self.trainable = make_optimizer(
            optimizer_config, params=abstract_params, param_axes=self.param_axes
        )
        abstract_state = jax.eval_shape(
            lambda p: TrainState(
                step=jnp.zeros([], jnp.int32),
                params=p,
                opt_state=self.optimizer.init(p),
                rng=jax.random.PRNGKey(0),
            ),
            abstract_params,
        )
        self.state_shardings = state_shardings(abstract_state, self.param_specs, self.mesh)
        self.abstract_state = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract_state,
            self.state_shardings,
        )
        self.batch_sharding = partitioning.batch_sharding(self.mesh)
        replicated = partitioning.replicated(self.mesh)

        self._param_init = _param_initializer(model_config, self.mesh)
        self._init_from_params = jax.jit(
            self._state_from_params,
            in_shardings=(self.state_shardings.params, replicated),
            out_shardings=self.state_shardings,
        )
        self._train_step = jax.jit(
            self._train_step_fn,
            in_shardings=(self.state_shardings, self.batch_sharding),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=(0,),
        )
        self._eval_step = jax.jit(
            self._eval_step_fn,
            in_shardings=(self.state_shardings.params, self.batch_sharding),
            out_shardings=replicated,
        )

    # --- public, compiled -----------------------------------------------------

    def init(self, seed: int) -> TrainState:
        """A fresh state: params from ``PRNGKey(seed)``, the step RNG from a split of it."""
        param_rng, step_rng = jax.random.split(jax.random.PRNGKey(seed))
        with partitioning.axis_rules(self.mesh):
            params = self._param_init(param_rng)
            return self._init_from_params(params, step_rng)

    def init_from_params(self, params: Any, seed: int) -> TrainState:
        """A step-0 state around given params (an initial checkpoint): fresh optimizer."""
        with partitioning.axis_rules(self.mesh):
            return self._init_from_params(params, jax.random.PRNGKey(seed))

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, Any]]:
        """One optimizer step. ``state`` is donated (do not reuse it)."""
        with partitioning.axis_rules(self.mesh):
            return self._train_step(state, self.shard(batch))

    def eval_step(self, params: Any, batch: Batch) -> dict[str, Any]:
        with partitioning.axis_rules(self.mesh):
            return self._eval_step(params, self.shard(batch))

    def shard(self, batch: Batch) -> dict[str, jax.Array]:
        """Host numpy batch -> arrays on the mesh (already-placed arrays pass through)."""
        batch = select_features(batch)
        if all(isinstance(v, jax.Array) for v in batch.values()):
            return batch
        rows = {v.shape[0] for v in batch.values()}
        if len(rows) != 1:
            raise ValueError(f"batch features have different row counts: {sorted(rows)}")
        (n,) = rows
        if n % self.num_microbatches:
            raise ValueError(
                f"batch of {n} rows does not split into {self.num_microbatches} microbatches; "
                "choose a batch size divisible by num_microbatches"
            )
        return partitioning.shard_batch(batch, self.mesh)

    # --- traced bodies ----------------------------------------------------------

    def _state_from_params(self, params: Any, rng: jax.Array) -> TrainState:
        return TrainState(
            step=jnp.zeros([], jnp.int32),
            params=params,
            opt_state=self.optimizer.init(params),
            rng=rng,
        )

    def _grads(self, params: Any, batch: Batch, rng: jax.Array):
        """(loss, summed parts, grads) over the microbatches of ``batch``."""
        m = self.num_microbatches
        grad_fn = jax.value_and_grad(
            partial(
                loss_fn,
                model=self.model,
                loss_config=self.loss_config,
                enable_dropout=True,
                loss_normalizer=jnp.sum(loss_weights(batch)),
                num_microbatches=m,
            ),
            has_aux=True,
        )
        if m == 1:
            (loss, parts), grads = grad_fn(params, batch, dropout_rng=rng)
            return loss, parts, grads

        batch_axes = PartitionSpec(None, ("data", "expert"))

        def split(x: jax.Array) -> jax.Array:
            x = x.reshape((x.shape[0] // m, m) + x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, batch_axes))

        micro = {k: split(v) for k, v in batch.items()}

        def body(carry, xs):
            index, mb = xs
            (loss, parts), grads = grad_fn(params, mb, dropout_rng=jax.random.fold_in(rng, index))
            return jax.tree_util.tree_map(jnp.add, carry, (loss, parts, grads)), None

        first = {k: v[0] for k, v in micro.items()}
        shapes = jax.eval_shape(lambda: grad_fn(params, first, dropout_rng=rng))
        (loss_shape, parts_shape), grads_shape = shapes
        zeros = jax.tree_util.tree_map(
            lambda s: jnp.zeros(s.shape, s.dtype), (loss_shape, parts_shape, grads_shape)
        )
        (loss, parts, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(m), micro))
        return loss, parts, grads

    def _train_step_fn(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss, parts, grads = self._grads(state.params, batch, rng)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        # Frozen params are returned untouched (not p + 0), so they stay bit-identical.
        params = jax.tree_util.tree_map(
            lambda trainable, p, u: (p + u).astype(p.dtype) if trainable else p,
            self.trainable,
            state.params,
            updates,
        )
        trained_grads = [
            g
            for g, t in zip(
                jax.tree_util.tree_leaves(grads),
                jax.tree_util.tree_leaves(self.trainable),
                strict=True,
            )
            if t
        ]
        metrics = summarize_parts(parts, num_microbatches=self.num_microbatches)
        grad_norm = optax.tree.norm(trained_grads)
        metrics.update(loss=loss, learning_rate=self.schedule(state.step), grad_norm=grad_norm)
        # A step whose loss or gradient norm is NaN/Inf is not applied: params and optimizer
        # state stay those of the last good step (the loop then stops the run).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        keep_good = lambda new, old: jnp.where(finite, new, old)
        params = jax.tree_util.tree_map(keep_good, params, state.params)
        opt_state = jax.tree_util.tree_map(keep_good, opt_state, state.opt_state)
        new_state = TrainState(
            step=state.step + 1, params=params, opt_state=opt_state, rng=state.rng
        )
        return new_state, metrics

    def _eval_step_fn(self, params: Any, batch: Batch) -> dict:
        loss, parts = loss_fn(
            params, batch, model=self.model, loss_config=self.loss_config, enable_dropout=False
        )
        metrics = summarize_parts(parts)
        metrics["loss"] = loss
        return metrics


TrainerKey = tuple[ModelConfig, OptimizerConfig, LossConfig, Mesh, int]


class TrainerCache:
    """Built trainers by their constructor arguments, least recently used evicted.

    Key (``key_of``): ``(model_config, optimizer_config, loss_config, mesh,
    num_microbatches)`` with the defaults filled in (``LossConfig()``, the mesh
    ``make_mesh(data=-1)``, 1 microbatch). The configs are frozen dataclasses and a
    ``Mesh`` compares by its devices and axis names, so equal arguments mean the same
    compiled steps; a trainer holds no train state, so sharing one is safe. For
    processes that build the same trainer again (``loop.train`` run after run, tests);
    ``Trainer(...)`` itself always builds.
    """

    def __init__(self, maxsize: int = 8) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self._trainers: collections.OrderedDict[TrainerKey, Trainer] = collections.OrderedDict()

    @staticmethod
    def key_of(
        *,
        model_config: ModelConfig,
        optimizer_config: OptimizerConfig,
        loss_config: LossConfig | None = None,
        mesh: Mesh | None = None,
        num_microbatches: int = 1,
    ) -> TrainerKey:
        mesh = mesh or partitioning.make_mesh(data=-1)
        return (model_config, optimizer_config, loss_config or LossConfig(), mesh, num_microbatches)

    def get_or_build(self, **kwargs: Any) -> Trainer:
        """The cached trainer for these ``Trainer`` keyword arguments, else a new one."""
        key = self.key_of(**kwargs)
        if key in self._trainers:
            self._trainers.move_to_end(key)
            return self._trainers[key]
        model_config, optimizer_config, loss_config, mesh, num_microbatches = key
        trainer = Trainer(
            model_config=model_config,
            optimizer_config=optimizer_config,
            loss_config=loss_config,
            mesh=mesh,
            num_microbatches=num_microbatches,
        )
        self._trainers[key] = trainer
        while len(self._trainers) > self.maxsize:
            self._trainers.popitem(last=False)
        return trainer

    def clear(self) -> None:
        self._trainers.clear()

    def __len__(self) -> int:
        return len(self._trainers)


TRAINER_CACHE = TrainerCache()
