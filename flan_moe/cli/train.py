"""Train a model from gin files: ``python -m flan_moe.cli.train --gin_file=... --gin.X=...``.

Example (a tiny model trained to step 50; the same command again does nothing, and
``--gin.TRAIN_STEPS=100`` continues to step 100)::

    python -m flan_moe.cli.train --gin_file=gin_configs/models/t5_1_1_tiny.gin \
        --gin_file=gin_configs/runs/pretrain.gin --gin.MODEL_DIR=/tmp/x --gin.TRAIN_STEPS=50

Exit status: 0 when the run reached ``TRAIN_STEPS``; 75 (``EXIT_STOPPED``) when it was
stopped earlier (SIGTERM/SIGINT: a checkpoint was saved, "stopped at step N of M;
re-run to continue"); 1 on an error.

Macros (set in gin files or with ``--gin.NAME=value``):

* from the model file: ``MODEL_NAME`` (a size in ``flan_moe.model.config.SIZES``, or
  ``"from_initial_checkpoint"``: the config of INITIAL_CHECKPOINT_PATH),
  optional ``MODEL_OVERRIDES`` (``{"field": value}``; ``{"moe": {...}}`` for MoE fields);
* from the run file / command line: ``MODEL_DIR``, ``TRAIN_STEPS`` (the ABSOLUTE
  target step, as in t5x: resumed at step 30, TRAIN_STEPS=50 trains 20 steps; a run
  from INITIAL_CHECKPOINT_PATH on a fresh MODEL_DIR starts at step 0),
  ``MIXTURE_OR_TASK_NAME`` (a registered SeqIO
  task/mixture, or ``"synthetic"`` for generated batches without TensorFlow),
  ``TASK_FEATURE_LENGTHS`` (``{"inputs": Li, "targets": Lt}``), ``BATCH_SIZE``
  (global), optional ``INITIAL_CHECKPOINT_PATH`` (our MODEL_DIR, a HF folder or a T5X
  checkpoint; params only, the run starts at step 0) and ``RUN_MODEL_OVERRIDES`` (run
  settings that change the model, e.g. dropout; applied after MODEL_OVERRIDES; its
  ``moe`` part is skipped, with a log line, for a dense model).

Configurable classes (``Name.field = value``): ``OptimizerConfig``, ``LossConfig``,
``TrainConfig`` (not ``train_steps``/``batch_size``: those are macros),
``DataOptions``, ``make_mesh`` (``make_mesh.expert = 2``).

Multi-host: ``--multihost`` calls ``jax.distributed.initialize`` (platform
auto-detection, or ``--coordinator_address``, ``--num_processes``, ``--process_id``);
each host reads its shard of the data (``BATCH_SIZE / process_count`` rows).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gin
import jax

from flan_moe import partitioning
from flan_moe.cli import validation
from flan_moe.cli.gin_flags import (
    check_macros,
    parse_gin,
    query_macro,
    split_gin_flags,
    write_operative_config,
)
from flan_moe.model.config import ModelConfig, get_config
from flan_moe.models import LossConfig
from flan_moe.training.loop import EXIT_STOPPED, TrainConfig, TrainResult, train
from flan_moe.training.optimizers import OptimizerConfig
from flan_moe.training.synthetic import SYNTHETIC_NAME, synthetic_batches

log = logging.getLogger("flan_moe.train")


@dataclass(frozen=True)
class DataOptions:
    """How training batches are read (the mixture name and lengths are macros)."""

    pack: bool = True
    vocabulary: str = "byte"
    split: str = "train"
    shuffle_buffer_size: int | None = None


GinOptimizerConfig = gin.external_configurable(OptimizerConfig, module="flan_moe")
GinLossConfig = gin.external_configurable(LossConfig, module="flan_moe")
GinTrainConfig = gin.external_configurable(
    TrainConfig, module="flan_moe", denylist=["train_steps", "batch_size"]
)
GinDataOptions = gin.external_configurable(DataOptions, module="flan_moe")
gin_make_mesh = gin.external_configurable(partitioning.make_mesh, module="flan_moe")


def _merge(base: dict, overrides: dict, *, where: str) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        if key not in base:
            raise validation.InputError(
                f"{where}: unknown model field {key!r}{validation.did_you_mean(key, base)}; "
                f"known: {sorted(base)}"
            )
        if isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _merge(base[key], value, where=f"{where}.{key}")
        else:
            out[key] = value
    return out


FROM_INITIAL_CHECKPOINT = "from_initial_checkpoint"


def resolve_model_config(
    name: str,
    overrides: dict | None = None,
    run_overrides: dict | None = None,
    *,
    initial_checkpoint: str | None = None,
) -> ModelConfig:
    """A size-table config with MODEL_OVERRIDES, then RUN_MODEL_OVERRIDES, applied.

    ``name="from_initial_checkpoint"``: the config INITIAL_CHECKPOINT_PATH was saved with
    (our metadata, or a HF folder's converted config.json)."""
    if name == FROM_INITIAL_CHECKPOINT:
        from flan_moe.interop.start import model_config_of

        values = model_config_of(initial_checkpoint).to_dict()
    else:
        values = get_config(name).to_dict()
    for label, layer in (("MODEL_OVERRIDES", overrides), ("RUN_MODEL_OVERRIDES", run_overrides)):
        layer = dict(layer or {})
        if layer.get("moe") is not None and values.get("moe") is None:
            if label == "MODEL_OVERRIDES":
                raise validation.InputError(f"{label} sets moe fields but model {name!r} is dense")
            log.info("dense model %r: skipping %s moe settings %s", name, label, layer["moe"])
            layer.pop("moe")
        values = _merge(values, layer, where=label)
    return ModelConfig.from_dict(values)


def _iterator_factory(
    name: str,
    *,
    feature_lengths: dict[str, int],
    host_batch_size: int,
    seed: int,
    options: DataOptions,
    vocab_size: int,
    opened: list,
):
    if name == SYNTHETIC_NAME:  # every host makes the global batch and keeps its rows
        return lambda start: synthetic_batches(
            batch_size=host_batch_size * jax.process_count(),
            feature_lengths=feature_lengths,
            vocab_size=vocab_size,
            seed=seed,
            start_step=start,
            shard=(jax.process_index(), jax.process_count()),
        )

    def factory(start: int):
        from flan_moe.cli.task_registry import register_tasks
        from flan_moe.data.iterators import make_train_iterator  # TensorFlow: only here

        register_tasks()

        iterator = make_train_iterator(
            name,
            feature_lengths=feature_lengths,
            batch_size=host_batch_size,
            seed=seed,
            pack=options.pack,
            split=options.split,
            start_step=start,
            shard_index=jax.process_index(),
            num_shards=jax.process_count(),
            vocabulary=options.vocabulary,
            shuffle_buffer_size=options.shuffle_buffer_size,
        )
        opened.append(iterator)
        return iterator

    return factory


def release_in_background(iterators: list) -> None:
    """Drop the last references to the data iterators on a daemon thread.

    A tf.data iterator's destructor cancels and waits for its in-flight work: measured
    0.6-12 s for the span-corruption pipeline (packing 128 documents at a time), up to
    ~50 s on a busy machine, all after the run's last line. The process goes on (and the
    CLI exits at once, ``fast_exit``) while the thread frees them."""
    held = list(iterators)
    iterators.clear()
    threading.Thread(target=held.clear, name="release-data-iterators", daemon=True).start()


def _vocab_size(spec: str) -> int:
    from flan_moe.data.vocabularies import get_vocabulary  # pure Python

    return int(get_vocabulary(spec).vocab_size)


def run_from_gin() -> TrainResult:
    """Build everything from the parsed gin config and train."""
    validation.check_train_macros(query_macro)
    model_dir = str(query_macro("MODEL_DIR"))
    train_steps = int(query_macro("TRAIN_STEPS"))
    name = str(query_macro("MIXTURE_OR_TASK_NAME"))
    feature_lengths = dict(query_macro("TASK_FEATURE_LENGTHS"))
    batch_size = int(query_macro("BATCH_SIZE"))
    initial = query_macro("INITIAL_CHECKPOINT_PATH", None)
    model_config = validation.build(
        resolve_model_config,
        str(query_macro("MODEL_NAME")),
        query_macro("MODEL_OVERRIDES", None),
        query_macro("RUN_MODEL_OVERRIDES", None),
        initial_checkpoint=initial,
        fix="fix MODEL_OVERRIDES / RUN_MODEL_OVERRIDES",
    )
    train_config = validation.build(GinTrainConfig, train_steps=train_steps, batch_size=batch_size)
    optimizer_config = validation.build(GinOptimizerConfig)
    loss_config = validation.build(GinLossConfig)
    options = validation.build(GinDataOptions)
    mesh = validation.build(gin_make_mesh)
    write_operative_config(model_dir)

    vocab_size = validation.build(_vocab_size, options.vocabulary, fix="fix DataOptions.vocabulary")
    validation.check_mixture(name)
    if vocab_size > model_config.vocab_size:
        raise validation.InputError(
            f"vocabulary {options.vocabulary!r} has {vocab_size} ids but model "
            f"{model_config.name!r} has vocab_size {model_config.vocab_size}; pick a model "
            "with a larger vocabulary or set MODEL_OVERRIDES={'vocab_size': ...}"
        )
    if batch_size % jax.process_count():
        raise validation.InputError(
            f"BATCH_SIZE {batch_size} must divide over {jax.process_count()} hosts"
        )
    opened: list = []
    factory = _iterator_factory(
        name,
        feature_lengths=feature_lengths,
        host_batch_size=batch_size // jax.process_count(),
        seed=train_config.seed,
        options=options,
        vocab_size=vocab_size,
        opened=opened,
    )
    log.info(
        "model %s, mixture %s, lengths %s, batch %d, %d steps -> %s",
        *(model_config.name, name, feature_lengths, batch_size, train_steps, model_dir),
    )
    result = train(
        model_config=model_config,
        train_config=train_config,
        optimizer_config=optimizer_config,
        loss_config=loss_config,
        iterator_factory=factory,
        model_dir=model_dir,
        mesh=mesh,
        initial_checkpoint_path=initial,
        run_metadata={
            "vocabulary": options.vocabulary,
            "task_feature_lengths": feature_lengths,
            "mixture_or_task_name": name,
        },
    )
    write_operative_config(model_dir)
    for iterator in opened:
        stats = getattr(iterator, "truncation", None)
        if stats is not None:
            log.info("data truncation (examples read so far): %s", stats.as_dict())
    release_in_background(opened)
    if result.stopped:
        log.warning("%s (last checkpoint %s)", result.stop_message(), result.last_checkpoint)
        return result
    log.info(
        "done: steps %d -> %d, last checkpoint %s",
        *(result.start_step, result.end_step, result.last_checkpoint),
    )
    return result


def _log_to_stderr() -> None:
    """INFO progress lines of the ``flan_moe`` loggers on stderr (once per process)."""
    logger = logging.getLogger("flan_moe")
    if not any(getattr(h, "_flan_moe", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._flan_moe = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)


def _maybe_initialize_distributed(args: argparse.Namespace) -> None:
    if not args.multihost:
        return
    kwargs: dict[str, Any] = {}
    # CPU hosts need a collectives backend for cross-process computations (no effect on GPU/TPU).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.coordinator_address:
        kwargs.update(
            coordinator_address=args.coordinator_address,
            num_processes=args.num_processes,
            process_id=args.process_id,
        )
    jax.distributed.initialize(**kwargs)
    log.info("process %d of %d", jax.process_index(), jax.process_count())


GIN_FLAGS_HELP = """gin flags (anywhere on the command line):
  --gin_file=PATH          a gin file; repeat it (a model file, then a run file)
  --gin.NAME=VALUE         set a macro (--gin.BATCH_SIZE=8) or a parameter
                           (--gin.OptimizerConfig.learning_rate=1e-3); a misspelt
                           name is an error that suggests the closest one
  --gin_bindings='X = 1'   a raw gin binding line (repeatable)
  --gin_search_paths=DIRS  comma list of directories where gin files are found
"""


def main(argv: Sequence[str] | None = None) -> TrainResult:
    """Parse flags (gin and multi-host), then train. Returns the run's result."""
    flags, rest = split_gin_flags(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m flan_moe.cli.train",
        description=__doc__,  # the gin usage: flags, macros, configurables
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=GIN_FLAGS_HELP,
    )
    parser.add_argument("--multihost", action="store_true", help="jax.distributed.initialize")
    parser.add_argument("--coordinator_address", default=None)
    parser.add_argument("--num_processes", type=int, default=None)
    parser.add_argument("--process_id", type=int, default=None)
    args = parser.parse_args(rest)
    if not flags.gin_files:
        parser.error("give at least one --gin_file (a model file and a run file)")
    _log_to_stderr()
    _maybe_initialize_distributed(args)
    parse_gin(flags)
    check_macros(validation.TRAIN_MACROS)
    return run_from_gin()


if __name__ == "__main__":
    # multi-host: the ordinary exit runs jax.distributed's shutdown handshake
    validation.run_cli_and_exit(
        lambda argv: EXIT_STOPPED if main(argv).stopped else 0,
        ordinary_exit="--multihost" in sys.argv,
    )
