"""Orbax checkpoints of a training run, and the reader the evaluator uses.

Layout (one directory per saved step, written by an orbax ``CheckpointManager``)::

    MODEL_DIR/checkpoint_<step>/
        params/     the model params (orbax standard PyTree; float32, unboxed)
        opt_state/  the optimizer state, leaves keyed by their '/'-joined key path
        train/      JSON: {"step", "rng": [uint32, uint32], "data_position"}
        metadata/   JSON: run metadata (see below)
        manifest.json  sizes + SHA-256 of every file (``integrity``), written on commit

Writes are atomic: orbax writes into a temporary directory and renames it when
complete, so a crash mid-write leaves the previous checkpoint usable and the
half-written one is never listed. The manager keeps the last K checkpoints.

Contract for readers (the evaluator codes against these two functions):

* ``list_checkpoints(model_dir) -> [(step, path), ...]``: complete checkpoints
  only, sorted by step.
* ``latest_checkpoint(model_dir, level=...) -> (step, path) | None``: THE latest (the
  newest that verifies against its manifest, see ``integrity``; a damaged newer one is
  named in a warning and skipped). Training resume and eval ``--latest_only`` use it.
* ``load_params(path) -> (params, ModelConfig, metadata)``: ``path`` is a
  MODEL_DIR (its latest checkpoint) or one checkpoint's directory, verified in full
  first (``CheckpointDamagedError`` names a damaged one). ``params`` are
  raw (unboxed) float32 jax arrays on the default device; ``metadata`` holds at
  least ``{"step": int, "vocabulary": str, "task_feature_lengths": {...},
  "model_config": {...}}`` (``ModelConfig.to_dict()``), plus what the trainer
  stored (mixture name, batch size, optimizer settings), ``vocabulary_fingerprint``
  and, for a run started from another checkpoint, ``initial_checkpoint``
  (``flan_moe.interop.start``: the vocabulary record and its mismatch check).

Loading params into a model whose shapes differ raises ``CheckpointMismatchError``
listing every mismatched path with both shapes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flan_moe.model.config import ModelConfig
from flan_moe.training import integrity
from flan_moe.training.optimizers import path_str
from flan_moe.training.train_state import TrainState

STEP_PREFIX = "checkpoint"
ITEMS = ("params", "opt_state", "train", "metadata")
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """A checkpoint's params do not fit the model (paths or shapes differ)."""


def _handlers() -> dict[str, ocp.CheckpointHandler]:
    return {
        "params": ocp.StandardCheckpointHandler(),
        "opt_state": ocp.StandardCheckpointHandler(),
        "train": ocp.JsonCheckpointHandler(),
        "metadata": ocp.JsonCheckpointHandler(),
    }


def _drop_read_only_note(record: logging.LogRecord) -> bool:
    """orbax warns "Given directory is read only" for every read-only manager (each eval
    load); opening read-only is our choice, not news, so that one message is dropped."""
    return record.msg != "Given directory is read only=%s"


logging.getLogger("absl").addFilter(_drop_read_only_note)


def _manager(directory: str, *, keep: int | None = None, read_only: bool = False):
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        save_interval_steps=0 if read_only else 1,  # read-only: orbax warns unless 0
        step_prefix=STEP_PREFIX,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=not read_only,
    )
    return ocp.CheckpointManager(
        os.path.abspath(directory), options=options, item_handlers=_handlers()
    )


def _is_complete(path: str) -> bool:
    return all(os.path.isdir(os.path.join(path, item)) for item in ("params", "metadata"))


def list_checkpoints(model_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``model_dir`` as (step, path), sorted by step."""
    if not os.path.isdir(model_dir):
        return []
    found = []
    for name in os.listdir(model_dir):
        match = _STEP_DIR.match(name)
        path = os.path.join(os.path.abspath(model_dir), name)
        if match and os.path.isdir(path) and _is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(
    model_dir: str, *, level: str = "full", warn: Callable[[str], None] | None = None
) -> tuple[int, str] | None:
    """(step, path) of the latest good checkpoint (``integrity.latest_good_checkpoint``);
    a damaged newer one is reported through ``warn`` (default: a logged warning)."""
    return integrity.latest_good_checkpoint(model_dir, level=level, warn=warn or log.warning)


def resolve_checkpoint(
    path: str, *, level: str = "full", warn: Callable[[str], None] | None = None
) -> tuple[str, int]:
    """(model_dir, step) for a MODEL_DIR (its latest good step) or one checkpoint directory.

    The checkpoint is verified (``integrity.verify_checkpoint`` at ``level``): one named
    directory that is damaged raises ``CheckpointDamagedError``; in a MODEL_DIR a damaged
    newest checkpoint is reported through ``warn`` (default: the log) and the previous
    good one is used.
    """
    path = os.path.abspath(path)
    match = _STEP_DIR.match(os.path.basename(path.rstrip("/")))
    if match and os.path.isdir(path):
        integrity.verify_checkpoint(path, level=level)
        return os.path.dirname(path), int(match.group(1))
    latest = latest_checkpoint(path, level=level, warn=warn)
    if latest is None:
        damaged = integrity.step_dirs(path)
        raise FileNotFoundError(
            f"no usable checkpoint found at {path}: expected a MODEL_DIR holding "
            f"{STEP_PREFIX}_<step>/ directories, or one such directory"
            + (f" ({len(damaged)} found, all damaged or incomplete)" if damaged else "")
        )
    return path, latest[0]


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    return {path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def check_compatible(saved: Any, expected: Any, *, source: str) -> None:
    """Raise ``CheckpointMismatchError`` listing param paths/shapes that differ."""
    have, want = _shapes(saved), _shapes(expected)
    problems = []
    for name in sorted(set(have) | set(want)):
        if name not in have:
            problems.append(f"  {name}: missing in checkpoint (model expects {want[name]})")
        elif name not in want:
            problems.append(f"  {name}: in checkpoint {have[name]} but not in the model")
        elif have[name] != want[name]:
            problems.append(f"  {name}: checkpoint {have[name]} != model {want[name]}")
    if problems:
        raise CheckpointMismatchError(
            f"checkpoint {source} does not fit the model ({len(problems)} mismatches):\n"
            + "\n".join(problems[:50])
            + ("\n  ..." if len(problems) > 50 else "")
            + "\nLoad it with the model config it was trained with (stored in its metadata)."
        )


def _abstract(tree: Any, sharding: jax.sharding.Sharding | None) -> Any:
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def one(x):
        s = getattr(x, "sharding", None) or sharding
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    return jax.tree_util.tree_map(one, tree)


def restore_params(
    path: str, abstract_params: Any, *, level: str = "full"
) -> tuple[Any, dict[str, Any]]:
    """Params (with the shardings of ``abstract_params``) and metadata from a checkpoint.

    ``path``: a MODEL_DIR or one checkpoint directory. It is verified at ``level``
    (``resolve_checkpoint``), then shapes are checked.
    """
    directory, step = resolve_checkpoint(path, level=level)
    manager = _manager(directory, read_only=True)
    try:
        saved = manager.item_metadata(step)["params"]
        check_compatible(saved, abstract_params, source=f"{directory} step {step}")
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(abstract_params, None)),
                metadata=ocp.args.JsonRestore(),
            ),
        )
    finally:
        manager.close()
    return restored["params"], dict(restored["metadata"])


def load_params(path: str) -> tuple[Any, ModelConfig, dict[str, Any]]:
    """(params, model config, metadata) of a MODEL_DIR's latest or one checkpoint."""
    directory, step = resolve_checkpoint(path)
    metadata_file = os.path.join(directory, f"{STEP_PREFIX}_{step}", "metadata", "metadata")
    with open(metadata_file) as f:
        metadata = json.load(f)
    config = ModelConfig.from_dict(metadata["model_config"])
    abstract = abstract_params_for(config)
    checkpoint = os.path.join(directory, f"{STEP_PREFIX}_{step}")
    params, metadata = restore_params(checkpoint, abstract, level="structure")  # verified above
    return params, config, metadata


def abstract_params_for(config: ModelConfig) -> Any:
    """Unboxed ShapeDtypeStructs of a model's params (no compute, no memory)."""
    import flax.linen as nn

    from flan_moe.model.transformer import EncoderDecoder

    tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
    abstract = jax.eval_shape(
        lambda t: EncoderDecoder(config).init(jax.random.PRNGKey(0), t, t, t), tokens
    )
    return nn.unbox(abstract["params"])


def _flat_by_path(tree: Any) -> dict[str, Any]:
    return {path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(tree)}


class Checkpointer:
    """Saves and restores a run's TrainState in ``model_dir`` (keeps the last ``keep``)."""

    def __init__(self, model_dir: str, *, keep: int | None = 3) -> None:
        self.model_dir = os.path.abspath(model_dir)
        self._manager = _manager(self.model_dir, keep=keep)
        self._pending: int | None = None  # a step whose save may still be in flight

    def latest_step(self) -> int | None:
        """The latest good step (``integrity.latest_good_checkpoint``), or None."""
        latest = integrity.latest_good_checkpoint(self.model_dir, level="structure")
        return None if latest is None else latest[0]

    def commit_pending(self) -> str | None:
        """Wait for the save in flight, write its manifest, log it; returns its path."""
        self._manager.wait_until_finished()
        if self._pending is None:
            return None
        step, self._pending = self._pending, None
        path = self.path(step)
        if not os.path.isdir(path):  # already removed by max_to_keep
            return None
        if jax.process_index() == 0:
            integrity.write_manifest(path, step)
        log.info("checkpoint at step %d committed: %s", step, path)
        return path

    def path(self, step: int) -> str:
        return os.path.join(self.model_dir, f"{STEP_PREFIX}_{step}")

    def save(self, state: TrainState, *, data_position: int, metadata: dict[str, Any]) -> str:
        """Start an (asynchronous) save of ``state``; returns its final path."""
        step = int(jax.device_get(state.step))
        self.commit_pending()
        train = {
            "step": step,
            "rng": [int(x) for x in np.asarray(jax.device_get(state.rng)).reshape(-1)],
            "data_position": int(data_position),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardSave(state.params),
                opt_state=ocp.args.StandardSave(_flat_by_path(state.opt_state)),
                train=ocp.args.JsonSave(train),
                metadata=ocp.args.JsonSave({**metadata, "step": step}),
            ),
            force=True,
        )
        self._pending = step
        return self.path(step)

    def restore(self, step: int, abstract_state: TrainState) -> tuple[TrainState, dict[str, Any]]:
        """The TrainState at ``step`` laid out like ``abstract_state`` (shapes+shardings),
        and the ``train`` record (step, rng, data_position)."""
        saved = self._manager.item_metadata(step)["params"]
        check_compatible(saved, abstract_state.params, source=self.path(step))
        flat_opt = _flat_by_path(abstract_state.opt_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                params=ocp.args.StandardRestore(_abstract(abstract_state.params, None)),
                opt_state=ocp.args.StandardRestore(_abstract(flat_opt, None)),
                train=ocp.args.JsonRestore(),
            ),
        )
        leaves = [restored["opt_state"][name] for name in flat_opt]
        treedef = jax.tree_util.tree_structure(abstract_state.opt_state)
        opt_state = jax.tree_util.tree_unflatten(treedef, leaves)
        train = dict(restored["train"])
        rng = jax.device_put(
            np.asarray(train["rng"], np.uint32).reshape(abstract_state.rng.shape),
            abstract_state.rng.sharding,
        )
        step_value = jax.device_put(
            np.asarray(train["step"], np.int32), abstract_state.step.sharding
        )
        state = TrainState(step=step_value, params=restored["params"], opt_state=opt_state, rng=rng)
        return state, train

    def wait(self) -> None:
        self.commit_pending()

    def close(self) -> None:
        self.commit_pending()
        self._manager.close()
