"""Where a run starts: ``INITIAL_CHECKPOINT_PATH`` in any supported format, and the
vocabulary record that travels with checkpoints.

Formats (``detect_format``):

* ``orbax``: our MODEL_DIR (its latest checkpoint) or one ``checkpoint_<step>/``;
* ``hf``: a Hugging Face folder (``config.json`` + safetensors or ``pytorch_model*.bin``;
  ``model_type`` ``t5`` or ``switch_transformers``);
* ``t5x``: a T5X ``checkpoint_<step>/`` directory (msgpack ``checkpoint`` + tensorstore).

Starting rule (documented in WORKSPACE.md): an initial checkpoint gives *params only*;
the run starts at step 0 with a fresh optimizer and data position 0, whatever step the
source was saved at.

Vocabulary record: every checkpoint's metadata carries ``vocabulary`` (the spec: ``byte``
or a SentencePiece ``.model`` path) and ``vocabulary_fingerprint`` (``byte`` or
``sentencepiece:sha256:<hex>`` of the model file, so a moved copy of the same file is
the same vocabulary). A HF folder's vocabulary is its ``spiece.model`` (when present); a
T5X checkpoint records none. Starting from a checkpoint whose recorded fingerprint differs
from the run's is an error naming both; an unrecorded one is logged and accepted (the
shapes are still checked).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

UNRECORDED = "unrecorded"
HF_SPIECE = "spiece.model"


class VocabularyMismatchError(ValueError):
    """The starting checkpoint was trained with another vocabulary than the run's."""


def vocabulary_fingerprint(spec: str | None) -> str:
    """``byte``, ``sentencepiece:sha256:<hex>`` of a ``.model`` file, or ``unrecorded``."""
    if not spec:
        return UNRECORDED
    if spec == "byte":
        return "byte"
    if not os.path.isfile(spec):
        raise FileNotFoundError(f"vocabulary file {spec!r} does not exist")
    with open(spec, "rb") as f:
        return "sentencepiece:sha256:" + hashlib.sha256(f.read()).hexdigest()


@dataclass(frozen=True)
class StartPoint:
    """What a run started from (stored in MODEL_DIR/initial_checkpoint.json and metadata)."""

    path: str
    format: str
    vocabulary: str
    vocabulary_fingerprint: str
    source_step: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def detect_format(path: str) -> str:
    """``orbax``, ``hf`` or ``t5x`` for a path, or a FileNotFoundError saying what was seen."""
    from flan_moe.interop.t5x import is_t5x_checkpoint
    from flan_moe.training.checkpoints import list_checkpoints

    if not os.path.exists(path):
        raise FileNotFoundError(f"initial checkpoint {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    if is_t5x_checkpoint(path):
        return "t5x"
    if os.path.isdir(os.path.join(path, "params")) or list_checkpoints(path):
        return "orbax"
    raise FileNotFoundError(
        f"{path!r} is not a checkpoint this project reads: expected our MODEL_DIR or "
        "checkpoint_<step>/ (orbax), a Hugging Face folder (config.json + safetensors), or "
        "a T5X checkpoint_<step>/ directory (msgpack 'checkpoint' file + tensorstore arrays)"
    )


def _hf_model(path: str, config_overrides: dict[str, Any]):
    from flan_moe.interop.hf_switch import config_from_hf_switch, params_from_hf_switch
    from flan_moe.interop.hf_t5 import config_from_hf_t5, params_from_hf_t5, read_hf_folder

    hf_config, state = read_hf_folder(path)
    kind = hf_config.get("model_type", "t5")
    if kind == "switch_transformers":
        config = config_from_hf_switch(hf_config, **config_overrides)
        return params_from_hf_switch(state, config), config
    if kind in ("t5", "mt5"):
        config = config_from_hf_t5(hf_config, **config_overrides)
        return params_from_hf_t5(state, config), config
    raise ValueError(f"{path!r}: model_type {kind!r} is not supported (t5, switch_transformers)")


def read_start(path: str, model_config=None, **config_overrides: Any):
    """(params as numpy/jax arrays, ModelConfig, StartPoint) from any supported format.

    ``model_config`` is required for T5X (which stores no config) and otherwise ignored
    by the HF path (whose config.json decides, plus ``config_overrides``)."""
    fmt = detect_format(path)
    if fmt == "hf":
        params, config = _hf_model(path, config_overrides)
        spiece = os.path.join(path, HF_SPIECE)
        vocab = spiece if os.path.isfile(spiece) else UNRECORDED
        return params, config, _start(path, fmt, vocab, None)
    if fmt == "t5x":
        from flan_moe.interop.t5x import load_t5x

        if model_config is None:
            raise ValueError(
                f"{path!r} is a T5X checkpoint, which stores no model config: give the "
                "model (--model=<size> for flan_moe.cli.convert; the run's MODEL_NAME)"
            )
        return load_t5x(path, model_config), model_config, _start(path, fmt, UNRECORDED, None)
    from flan_moe.training.checkpoints import load_params

    params, config, metadata = load_params(path)
    start = StartPoint(
        path=os.path.abspath(path),
        format=fmt,
        vocabulary=str(metadata.get("vocabulary", UNRECORDED)),
        vocabulary_fingerprint=str(metadata.get("vocabulary_fingerprint", UNRECORDED)),
        source_step=metadata.get("step"),
    )
    return params, config, start


def _start(path: str, fmt: str, vocab: str, step: int | None) -> StartPoint:
    fingerprint = vocabulary_fingerprint(vocab) if vocab != UNRECORDED else UNRECORDED
    return StartPoint(os.path.abspath(path), fmt, vocab, fingerprint, step)


def check_vocabulary(start: StartPoint, run_vocabulary: str | None) -> None:
    """Raise VocabularyMismatchError when the start's recorded vocabulary is not the run's."""
    if run_vocabulary is None:
        return
    if start.vocabulary_fingerprint == UNRECORDED:
        log.warning(
            "initial checkpoint %s records no vocabulary; the run uses %r (only the "
            "embedding shape is checked)",
            *(start.path, run_vocabulary),
        )
        return
    run_fingerprint = vocabulary_fingerprint(run_vocabulary)
    if run_fingerprint != start.vocabulary_fingerprint:
        raise VocabularyMismatchError(
            f"initial checkpoint {start.path} was trained with vocabulary "
            f"{start.vocabulary!r} ({start.vocabulary_fingerprint}) but this run uses "
            f"{run_vocabulary!r} ({run_fingerprint}). Set the run's vocabulary "
            f"(DataOptions.vocabulary) to the checkpoint's, or start from another checkpoint."
        )


def write_start_record(model_dir: str, start: StartPoint) -> str:
    """MODEL_DIR/initial_checkpoint.json: where the run started and with which vocabulary."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, "initial_checkpoint.json")
    record = {**start.to_dict(), "rule": "params only; the run starts at step 0"}
    with open(path, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    return path


def load_initial_params(
    path: str, model_config, abstract_params: Any, *, run_vocabulary: str | None
) -> tuple[Any, StartPoint]:
    """Params for a new run from ``path`` (any format), laid out like ``abstract_params``.

    The run's ``model_config`` decides the model; the source's params must fit it
    (``CheckpointMismatchError`` lists the differences); the vocabularies must agree."""
    from flan_moe.training.checkpoints import check_compatible, restore_params

    if detect_format(path) == "orbax":
        params, metadata = restore_params(path, abstract_params)
        vocab = str(metadata.get("vocabulary", UNRECORDED))
        fingerprint = metadata.get("vocabulary_fingerprint")
        if fingerprint is None and vocab != UNRECORDED:
            fingerprint = (
                vocabulary_fingerprint(vocab)
                if os.path.exists(vocab) or vocab == "byte"
                else UNRECORDED
            )
        start = StartPoint(
            os.path.abspath(path), "orbax", vocab, fingerprint or UNRECORDED, metadata.get("step")
        )
    else:
        params, _, start = read_start(path, model_config)
        check_compatible(params, abstract_params, source=f"{path} ({start.format})")
    check_vocabulary(start, run_vocabulary)
    return params, start


def model_config_of(path: str | None):
    """The ModelConfig a checkpoint was saved with (``MODEL_NAME="from_initial_checkpoint"``):
    our metadata's ``model_config``, or a HF folder's converted config.json."""
    import json as _json

    from flan_moe.model.config import ModelConfig

    if not path:
        raise ValueError(
            'MODEL_NAME = "from_initial_checkpoint" needs INITIAL_CHECKPOINT_PATH to be set'
        )
    fmt = detect_format(path)
    if fmt == "hf":
        from flan_moe.interop.hf_switch import config_from_hf_switch
        from flan_moe.interop.hf_t5 import config_from_hf_t5

        with open(os.path.join(path, "config.json")) as f:
            hf_config = _json.load(f)
        if hf_config.get("model_type") == "switch_transformers":
            return config_from_hf_switch(hf_config)
        return config_from_hf_t5(hf_config)
    if fmt == "orbax":
        from flan_moe.training.checkpoints import STEP_PREFIX, resolve_checkpoint

        directory, step = resolve_checkpoint(path)
        with open(os.path.join(directory, f"{STEP_PREFIX}_{step}", "metadata", "metadata")) as f:
            return ModelConfig.from_dict(_json.load(f)["model_config"])
    raise ValueError(
        f"{path!r} is a T5X checkpoint, which stores no model config: set MODEL_NAME to its "
        "size (e.g. switch_base_8) instead of 'from_initial_checkpoint'"
    )


def read_start_record(model_dir: str) -> dict[str, Any] | None:
    """MODEL_DIR/initial_checkpoint.json, or None for a run that started from scratch."""
    path = os.path.join(model_dir, "initial_checkpoint.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)
