"""The training run: resume, step, log, checkpoint, stop safely.

``train(...)`` is the library entry point the CLI wraps with gin. Order of resume:
the latest complete checkpoint in ``model_dir``; else ``initial_checkpoint_path``
(params only: a new run at step 0 with a fresh optimizer); else from scratch.

Resume is exact: the step, params, optimizer state and RNG come from the
checkpoint, and the data iterator restarts at the stored ``data_position`` (the
number of batches this run has consumed), so an interrupted run + resume ends with
the same params as an uninterrupted one. ``train_steps`` counts steps of THIS
invocation (not an absolute step): two invocations of 50 steps end at step 100.

Checkpoints: every ``checkpoint_every`` steps, at the end, and on SIGTERM/SIGINT
(the step in flight finishes, a checkpoint is written, the run returns).
``train_steps=0`` on a fresh ``model_dir`` writes the initial model as checkpoint 0
(to evaluate a model before it is trained). A NaN/Inf
loss raises ``NonFiniteLossError`` naming the step and the last good checkpoint;
no checkpoint is written after it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from flan_moe.model.config import ModelConfig
from flan_moe.models import LossConfig
from flan_moe.training.checkpoints import Checkpointer, restore_params
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.summaries import MetricAverager, Progress, SummaryWriter, flatten_metrics
from flan_moe.training.train_state import TrainState
from flan_moe.training.trainer import Trainer

log = logging.getLogger(__name__)

IteratorFactory = Callable[[int], Iterator[dict[str, np.ndarray]]]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf; the run stopped without saving the bad state."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the loop (not of the model or optimizer)."""

    train_steps: int
    batch_size: int
    num_microbatches: int = 1
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int | None = 3
    log_every: int = 50
    stop_on_nonfinite: bool = True

    def __post_init__(self) -> None:
        if self.train_steps < 0:
            raise ValueError(f"train_steps must be >= 0, got {self.train_steps}")
        if self.batch_size < 1 or self.batch_size % self.num_microbatches:
            raise ValueError(
                f"batch_size {self.batch_size} must be positive and divisible by "
                f"num_microbatches {self.num_microbatches}"
            )
        if self.checkpoint_every < 1 or self.log_every < 1:
            raise ValueError("checkpoint_every and log_every must be >= 1")


@dataclass
class TrainResult:
    state: TrainState
    start_step: int
    end_step: int
    last_checkpoint: str | None
    stopped_by_signal: bool = False
    history: list[dict[str, float]] = field(default_factory=list)


class _StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # a second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("received signal %d: saving a checkpoint after this step", signum)

    @contextlib.contextmanager
    def installed(self):
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _real_tokens(batch: dict[str, np.ndarray]) -> int:
    n = 0
    for name in ("encoder_input_tokens", "decoder_target_tokens"):
        if name in batch:
            n += int(np.count_nonzero(np.asarray(batch[name])))
    return n


def _check_batch(batch: dict[str, np.ndarray], batch_size: int, step: int) -> None:
    for name, value in batch.items():
        if getattr(value, "ndim", 0) and value.shape[0] != batch_size:
            raise ValueError(
                f"batch at step {step}: feature {name!r} has {value.shape[0]} rows but "
                f"this host's batch size is {batch_size}; the iterator and the run disagree"
            )


def train(
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    optimizer_config: OptimizerConfig,
    iterator_factory: IteratorFactory,
    model_dir: str,
    loss_config: LossConfig | None = None,
    mesh: Mesh | None = None,
    initial_checkpoint_path: str | None = None,
    run_metadata: dict[str, Any] | None = None,
    trainer: Trainer | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train ``train_config.train_steps`` steps in ``model_dir`` (see module docstring).

    ``iterator_factory(start)`` must yield the run's batches from batch index
    ``start`` on. ``run_metadata`` (vocabulary, task_feature_lengths, ...) is stored
    with every checkpoint. ``trainer`` reuses compiled steps (tests); ``stop_after``
    simulates an interruption after that many steps of this invocation.
    """
    cfg = train_config
    if trainer is None:
        trainer = Trainer(
            model_config=model_config,
            optimizer_config=optimizer_config,
            loss_config=loss_config,
            mesh=mesh,
            num_microbatches=cfg.num_microbatches,
        )
    metadata = {
        **(run_metadata or {}),
        "model_config": model_config.to_dict(),
        "optimizer_config": asdict(optimizer_config),
        "batch_size": cfg.batch_size,
    }
    checkpointer = Checkpointer(model_dir, keep=cfg.keep_checkpoints)
    latest = checkpointer.latest_step()
    if latest is not None:
        state, record = checkpointer.restore(latest, trainer.abstract_state)
        data_position = int(record["data_position"])
        last_checkpoint: str | None = checkpointer.path(latest)
        log.info("resuming from %s (data position %d)", last_checkpoint, data_position)
    elif initial_checkpoint_path:
        params, _ = restore_params(initial_checkpoint_path, trainer.abstract_state.params)
        state = trainer.init_from_params(params, cfg.seed)
        data_position, last_checkpoint = 0, None
        log.info("starting from initial checkpoint %s", initial_checkpoint_path)
    else:
        state = trainer.init(cfg.seed)
        data_position, last_checkpoint = 0, None
        log.info("starting from scratch (seed %d)", cfg.seed)

    start = int(jax.device_get(state.step))
    end = start + cfg.train_steps
    result = TrainResult(state=state, start_step=start, end_step=end, last_checkpoint=None)
    writer = SummaryWriter(model_dir)
    averager, progress = MetricAverager(), Progress(start_step=start, end_step=end)
    stop = _StopFlag()
    iterator = iterator_factory(data_position)
    pending: tuple[int, dict] | None = None  # (step, device metrics) not yet checked

    def drain() -> None:
        """Fetch and check the metrics of the last dispatched step."""
        nonlocal pending
        if pending is None:
            return
        step, metrics = pending
        pending = None
        scalars = flatten_metrics(jax.device_get(metrics))
        if cfg.stop_on_nonfinite and not math.isfinite(scalars["loss"]):
            raise NonFiniteLossError(
                f"loss is {scalars['loss']} at step {step} (the update that produced step "
                f"{step}). Last good checkpoint: {last_checkpoint or 'none (no checkpoint yet)'}."
                " Lower the learning rate, check the data at this step, or enable loss/grad "
                "clipping (OptimizerConfig.max_grad_norm) and resume from that checkpoint."
            )
        averager.add(scalars)
        if step % cfg.log_every == 0 or step == end:
            logged = {**averager.mean(), **progress.measure(step)}
            writer.write(step, logged)
            result.history.append({"step": step, **logged})
            log.info(progress.line(step, logged))
            averager.reset()

    def save(state: TrainState, step: int) -> None:
        nonlocal last_checkpoint
        drain()
        last_checkpoint = checkpointer.save(state, data_position=data_position, metadata=metadata)
        result.last_checkpoint = last_checkpoint
        log.info("checkpoint at step %d -> %s", step, last_checkpoint)

    if start < end:
        log.info("compiling the train step (the first step includes compilation)...")
    try:
        with stop.installed():
            step = start
            while step < end:
                try:
                    batch = next(iterator)
                except StopIteration:
                    raise RuntimeError(
                        f"the data iterator ran out at step {step} (data position "
                        f"{data_position}); use a repeating training split or fewer steps"
                    ) from None
                _check_batch(batch, cfg.batch_size // jax.process_count(), step)
                progress.add_tokens(_real_tokens(batch))
                state, metrics = trainer.train_step(state, batch)
                data_position += 1
                step += 1
                drain()  # the previous step's metrics; this step keeps running
                pending = (step, metrics)
                interrupted = stop_after is not None and step - start >= stop_after
                if step % cfg.checkpoint_every == 0 or step == end or stop.signal or interrupted:
                    save(state, step)
                if stop.signal is not None or interrupted:
                    result.stopped_by_signal = stop.signal is not None
                    break
            drain()
            if latest is not None and start == end:
                last_checkpoint = checkpointer.path(latest)
            elif start == end:
                # TRAIN_STEPS=0 on a fresh MODEL_DIR: write the initial model (from scratch
                # or INITIAL_CHECKPOINT_PATH) so it can be evaluated before any training.
                save(state, start)
    finally:
        checkpointer.close()
        writer.close()
    result.state = state
    result.last_checkpoint = last_checkpoint
    result.end_step = int(jax.device_get(state.step))
    return result
