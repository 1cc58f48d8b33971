"""The training run: resume, step, log, checkpoint, stop safely.

``train(...)`` is the library entry point the CLI wraps with gin. Order of resume:
the latest good checkpoint in ``model_dir`` (``integrity.latest_good_checkpoint``: a
damaged or incomplete newer one is named in a warning and moved aside to
``checkpoint_<step>.damaged``); else ``initial_checkpoint_path`` (params only: a new
run at step 0 with a fresh optimizer and data position 0, from our orbax checkpoints, a
Hugging Face folder or a T5X checkpoint: ``flan_moe.interop.start``; recorded in
MODEL_DIR/initial_checkpoint.json and the checkpoints' metadata, and refused when its
recorded vocabulary is not the run's); else from scratch.

``train_steps`` is the ABSOLUTE target step (t5x's convention): the run trains from
its checkpoint's step up to ``train_steps``, so re-running the same command after an
interruption finishes the plan and re-running a finished one does nothing.

Resume is exact: the step, params, optimizer state and RNG come from the
checkpoint, and the data iterator restarts at the stored ``data_position`` (the
number of batches this run has consumed), so an interrupted run + resume ends with
the same params as an uninterrupted one. Metrics logged after the resumed step are
dropped from ``metrics.jsonl`` (they are trained again).

Checkpoints: every ``checkpoint_every`` steps, at the end, and on SIGTERM/SIGINT
(the step in flight finishes, a checkpoint is written, the run returns with
``result.stopped``; the CLI then exits with ``EXIT_STOPPED``). "checkpoint at step N
committed" is logged once orbax has it on disk, with its manifest written.
``train_steps=0`` on a fresh ``model_dir`` writes the initial model as checkpoint 0
(to evaluate a model before it is trained). One writer per ``model_dir``
(``model_dir_lock``).

Non-finite values: the loss and the gradient norm of every step are checked before
anything after that step is saved; a NaN/Inf raises ``NonFiniteLossError`` naming the
step and the last good checkpoint, and nothing is saved after it. Params are also
checked finite before every save and after a restore, so the "last good checkpoint"
really is finite.
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
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from flan_moe.interop.start import (
    load_initial_params,
    read_start_record,
    vocabulary_fingerprint,
    write_start_record,
)
from flan_moe.model.config import ModelConfig
from flan_moe.models import LossConfig
from flan_moe.training import integrity
from flan_moe.training.checkpoints import Checkpointer
from flan_moe.training.model_dir_lock import model_dir_lock
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.summaries import MetricAverager, Progress, SummaryWriter, flatten_metrics
from flan_moe.training.train_state import TrainState
from flan_moe.training.trainer import TRAINER_CACHE, Trainer

log = logging.getLogger(__name__)

IteratorFactory = Callable[[int], Iterator[dict[str, np.ndarray]]]
EXIT_STOPPED = 75  # EX_TEMPFAIL: stopped before the target step, re-run to continue


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN/Inf; the run stopped without saving it."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the loop (not of the model or optimizer)."""

    train_steps: int  # the absolute target step
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
    target_step: int = 0

    @property
    def stopped(self) -> bool:
        """True when the run ended before its target step (signal or ``stop_after``)."""
        return self.end_step < self.target_step

    def stop_message(self) -> str:
        return f"stopped at step {self.end_step} of {self.target_step}; re-run to continue"


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def check_finite_params(params: Any, *, where: str) -> None:
    """Raise ``NonFiniteLossError`` when any param is NaN/Inf."""
    if not bool(jax.device_get(_all_finite(params))):
        raise NonFiniteLossError(
            f"{where}: params contain NaN/Inf. Move that checkpoint aside (or delete it) and "
            "resume from an earlier one, with a lower learning rate or gradient clipping."
        )


def _nonfinite_problem(scalars: dict[str, float]) -> str | None:
    bad = [
        f"{name} is {scalars[name]}"
        for name in ("loss", "grad_norm")
        if name in scalars and not math.isfinite(scalars[name])
    ]
    return ", ".join(bad) or None


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


def _resume_checkpoint(model_dir: str) -> tuple[int, str] | None:
    """The latest good checkpoint; newer damaged ones are named and moved aside."""

    def move_aside(step: int, path: str) -> None:
        if jax.process_index() == 0:
            log.warning("moved damaged checkpoint %s to %s", path, integrity.move_aside(path))

    return integrity.latest_good_checkpoint(
        model_dir, level="full", warn=log.warning, on_damaged=move_aside
    )


def _initial_state(
    trainer: Trainer,
    checkpointer: Checkpointer,
    latest: tuple[int, str] | None,
    initial_checkpoint_path: str | None,
    seed: int,
    *,
    model_config: ModelConfig,
    model_dir: str,
    metadata: dict[str, Any],
) -> tuple[TrainState, int]:
    """(state, data position): from ``latest``, else the initial checkpoint, else scratch.

    Records where the run started in ``metadata["initial_checkpoint"]`` (and, for a new
    run, in MODEL_DIR/initial_checkpoint.json) so every later checkpoint keeps it.
    """
    if latest is not None:
        state, record = checkpointer.restore(latest[0], trainer.abstract_state)
        check_finite_params(state.params, where=f"checkpoint {latest[1]}")
        log.info("resuming from %s (data position %d)", latest[1], int(record["data_position"]))
        if (start_record := read_start_record(model_dir)) is not None:
            metadata["initial_checkpoint"] = start_record
        return state, int(record["data_position"])
    if initial_checkpoint_path:
        # Any format (orbax / Hugging Face / T5X); params only: step 0, fresh optimizer.
        params, start_point = load_initial_params(
            initial_checkpoint_path,
            model_config,
            trainer.abstract_state.params,
            run_vocabulary=metadata.get("vocabulary"),
        )
        metadata["initial_checkpoint"] = start_point.to_dict()
        write_start_record(model_dir, start_point)
        log.info(
            "starting at step 0 from initial checkpoint %s (%s)",
            initial_checkpoint_path,
            start_point.format,
        )
        return trainer.init_from_params(params, seed), 0
    log.info("starting from scratch (seed %d)", seed)
    return trainer.init(seed), 0


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
    """Train up to step ``train_config.train_steps`` in ``model_dir`` (see module docstring).

    ``iterator_factory(start)`` must yield the run's batches from batch index
    ``start`` on. ``run_metadata`` (vocabulary, task_feature_lengths, ...) is stored
    with every checkpoint. ``trainer`` reuses compiled steps (tests); ``stop_after``
    simulates an interruption after that many steps of this invocation.
    """
    with model_dir_lock(model_dir, enabled=jax.process_index() == 0):
        return _train_locked(
            model_config=model_config,
            train_config=train_config,
            optimizer_config=optimizer_config,
            iterator_factory=iterator_factory,
            model_dir=model_dir,
            loss_config=loss_config,
            mesh=mesh,
            initial_checkpoint_path=initial_checkpoint_path,
            run_metadata=run_metadata,
            trainer=trainer,
            stop_after=stop_after,
        )


def _train_locked(
    *,
    model_config: ModelConfig,
    train_config: TrainConfig,
    optimizer_config: OptimizerConfig,
    iterator_factory: IteratorFactory,
    model_dir: str,
    loss_config: LossConfig | None,
    mesh: Mesh | None,
    initial_checkpoint_path: str | None,
    run_metadata: dict[str, Any] | None,
    trainer: Trainer | None,
    stop_after: int | None,
) -> TrainResult:
    cfg = train_config
    if trainer is None:
        trainer = TRAINER_CACHE.get_or_build(
            model_config=model_config,
            optimizer_config=optimizer_config,
            loss_config=loss_config,
            mesh=mesh,
            num_microbatches=cfg.num_microbatches,
        )
    metadata = _checkpoint_metadata(run_metadata, model_config, optimizer_config, cfg.batch_size)
    latest = _resume_checkpoint(model_dir)
    checkpointer = Checkpointer(model_dir, keep=cfg.keep_checkpoints)
    state, data_position = _initial_state(
        trainer, checkpointer, latest, initial_checkpoint_path, cfg.seed,
        model_config=model_config, model_dir=model_dir, metadata=metadata,
    )  # fmt: skip
    start = int(jax.device_get(state.step))
    end = _end_step(start, cfg.train_steps)
    result = TrainResult(
        state=state, start_step=start, end_step=end, last_checkpoint=None, target_step=end
    )
    recorder = _StepRecorder(
        cfg, model_dir=model_dir, start=start, end=end, checkpointer=checkpointer,
        metadata=metadata, result=result, last_checkpoint=None if latest is None else latest[1],
    )  # fmt: skip
    stop = _StopFlag()
    iterator = iterator_factory(data_position)
    if start < end:
        log.info("compiling the train step (the first step includes compilation)...")
    try:
        with stop.installed():
            state = _run_steps(
                trainer, state, iterator, recorder, stop,
                start=start, data_position=data_position, stop_after=stop_after,
            )  # fmt: skip
            if latest is None and start == end:
                # TRAIN_STEPS=0 on a fresh MODEL_DIR: write the initial model (from scratch
                # or INITIAL_CHECKPOINT_PATH) so it can be evaluated before any training.
                recorder.save(state, start, data_position)
    finally:
        checkpointer.close()
        recorder.close()
    result.state = state
    result.last_checkpoint = recorder.last_checkpoint
    result.end_step = int(jax.device_get(state.step))
    return result


def _checkpoint_metadata(
    run_metadata: dict[str, Any] | None,
    model_config: ModelConfig,
    optimizer_config: OptimizerConfig,
    batch_size: int,
) -> dict[str, Any]:
    """What every checkpoint of the run stores beside the state."""
    metadata = {
        **(run_metadata or {}),
        "model_config": model_config.to_dict(),
        "optimizer_config": asdict(optimizer_config),
        "batch_size": batch_size,
    }
    if "vocabulary" in metadata:  # the vocabulary travels with every checkpoint
        metadata.setdefault(
            "vocabulary_fingerprint", vocabulary_fingerprint(metadata["vocabulary"])
        )
    return metadata


def _end_step(start: int, train_steps: int) -> int:
    """The step to train to: TRAIN_STEPS (absolute), or ``start`` when already past it."""
    if start > train_steps:
        log.warning(
            "the checkpoint is at step %d, past TRAIN_STEPS=%d (the absolute target step): "
            "nothing to train", start, train_steps,
        )  # fmt: skip
        return start
    return train_steps


def _run_steps(
    trainer: Trainer,
    state: TrainState,
    iterator: Iterator[dict[str, np.ndarray]],
    recorder: _StepRecorder,
    stop: _StopFlag,
    *,
    start: int,
    data_position: int,
    stop_after: int | None,
) -> TrainState:
    """Train from ``start`` to ``recorder.end``; checkpoint every ``checkpoint_every``
    steps, at the end, and on a stop signal or after ``stop_after`` steps (then stop)."""
    cfg, end = recorder.cfg, recorder.end
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
        recorder.progress.add_tokens(_real_tokens(batch))
        state, metrics = trainer.train_step(state, batch)
        data_position += 1
        step += 1
        recorder.dispatched(step, metrics)  # checks the previous step's; this one runs on
        interrupted = stop_after is not None and step - start >= stop_after
        if step % cfg.checkpoint_every == 0 or step == end or stop.signal or interrupted:
            recorder.save(state, step, data_position)
        if stop.signal is not None or interrupted:
            recorder.result.stopped_by_signal = stop.signal is not None
            break
    recorder.drain()
    return state


class _StepRecorder:
    """One step late (the next step is already dispatched): checks a step's metrics for
    NaN/Inf, averages and writes them every ``log_every`` steps; saves checkpoints
    after checking the pending metrics (a non-finite step is never saved)."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        model_dir: str,
        start: int,
        end: int,
        checkpointer: Checkpointer,
        metadata: dict[str, Any],
        result: TrainResult,
        last_checkpoint: str | None,
    ) -> None:
        self.cfg, self.end, self.result = cfg, end, result
        self.checkpointer, self.metadata = checkpointer, metadata
        self.last_checkpoint = last_checkpoint
        self.writer = SummaryWriter(model_dir, resume_step=start)
        self.averager = MetricAverager()
        self.progress = Progress(start_step=start, end_step=end)
        self.pending: tuple[int, dict] | None = None  # (step, device metrics) not yet checked

    def dispatched(self, step: int, metrics: dict) -> None:
        """Check the previous step's metrics, and keep this step's for later."""
        self.drain()
        self.pending = (step, metrics)

    def drain(self) -> None:
        """Fetch and check the metrics of the last dispatched step."""
        if self.pending is None:
            return
        (step, metrics), self.pending = self.pending, None
        scalars = flatten_metrics(jax.device_get(metrics))
        problem = _nonfinite_problem(scalars) if self.cfg.stop_on_nonfinite else None
        if problem:
            raise NonFiniteLossError(
                f"{problem} at step {step} (the update that produced step {step}; it was "
                f"not saved). Last good checkpoint: "
                f"{self.last_checkpoint or 'none (no checkpoint yet)'}. Lower the learning "
                "rate, check the data at this step, or enable gradient clipping "
                "(OptimizerConfig.max_grad_norm) and resume from that checkpoint."
            )
        self.averager.add(scalars)
        if step % self.cfg.log_every == 0 or step == self.end:
            logged = {**self.averager.mean(), **self.progress.measure(step)}
            self.writer.write(step, logged)
            self.result.history.append({"step": step, **logged})
            log.info(self.progress.line(step, logged))
            self.averager.reset()

    def save(self, state: TrainState, step: int, data_position: int) -> None:
        self.drain()  # a NaN/Inf loss or gradient norm at this step raises before saving
        if self.cfg.stop_on_nonfinite:
            check_finite_params(state.params, where=f"step {step}")
        self.last_checkpoint = self.checkpointer.save(
            state, data_position=data_position, metadata=self.metadata
        )
        self.result.last_checkpoint = self.last_checkpoint
        log.debug("saving checkpoint at step %d -> %s", step, self.last_checkpoint)

    def close(self) -> None:
        self.writer.close()
