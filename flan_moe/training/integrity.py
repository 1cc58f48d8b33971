"""Checkpoint integrity: a manifest of checksums per checkpoint, and the latest good one.

Every checkpoint the trainer writes gets ``MODEL_DIR/checkpoint_<step>/manifest.json``
once orbax has committed it::

    {"format": 1, "step": 40, "files": {"params/d/9f...": {"size": 208, "sha256": "..."}, ...}}

``verify_checkpoint(path, level=...)`` checks a checkpoint before it is used:

* always: the files a reader needs first are there (``params/_METADATA``,
  ``metadata/metadata``), so an empty or half-copied folder is
  named as incomplete instead of failing deep inside orbax;
* ``level="sizes"`` (cheap: one ``stat`` per file): every listed file exists with its
  size; ``level="full"``: and its SHA-256 matches (a flipped bit is caught).

A checkpoint without a manifest (written before manifests existed, or a run killed in
the moment between orbax's commit and the manifest) is used with a warning: it is
complete but unverified.

"Latest" means one thing everywhere (training resume, ``load_params`` on a MODEL_DIR,
eval ``--latest_only``): ``latest_good_checkpoint`` — the highest-step
``checkpoint_<step>`` folder that passes ``verify_checkpoint``. Damaged or incomplete
newer ones are reported by name through ``warn`` and skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable

MANIFEST = "manifest.json"
STEP_PREFIX = "checkpoint"
STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")
REQUIRED_FILES = ("params/_METADATA", "metadata/metadata")
LEVELS = ("structure", "sizes", "full")


class CheckpointDamagedError(RuntimeError):
    """A checkpoint is incomplete or its files do not match its manifest."""


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(path: str) -> list[str]:
    found = []
    for root, _, names in os.walk(path):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), path)
            if rel != MANIFEST:
                found.append(rel)
    return sorted(found)


def write_manifest(path: str, step: int) -> str:
    """Write ``path/manifest.json`` (sizes + SHA-256 of every file), atomically."""
    files = {}
    for rel in _files(path):
        file = os.path.join(path, rel)
        files[rel] = {"size": os.path.getsize(file), "sha256": file_sha256(file)}
    target = os.path.join(path, MANIFEST)
    tmp = target + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"format": 1, "step": int(step), "files": files}, f, indent=1, sort_keys=True)
    os.replace(tmp, target)
    return target


def read_manifest(path: str) -> dict | None:
    """The manifest of a checkpoint, or None when it has none."""
    target = os.path.join(path, MANIFEST)
    if not os.path.exists(target):
        return None
    try:
        with open(target) as f:
            manifest = json.load(f)
    except ValueError as e:
        raise CheckpointDamagedError(f"checkpoint {path}: unreadable {MANIFEST} ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise CheckpointDamagedError(f"checkpoint {path}: {MANIFEST} has no file table")
    return manifest


def verify_checkpoint(path: str, *, level: str = "full") -> bool:
    """Raise ``CheckpointDamagedError`` naming the checkpoint and the problem.

    Returns True when a manifest was checked, False for a complete checkpoint without
    one (unverified). ``level``: "structure", "sizes" or "full" (see module docstring).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    missing = [f for f in REQUIRED_FILES if not os.path.isfile(os.path.join(path, f))]
    if missing:
        raise CheckpointDamagedError(
            f"checkpoint {path} is incomplete: missing {', '.join(missing)} (an interrupted "
            "copy or write)"
        )
    manifest = read_manifest(path)
    if manifest is None:
        return False
    if level == "structure":
        return True
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        file = os.path.join(path, rel)
        if not os.path.isfile(file):
            problems.append(f"{rel}: missing")
        elif os.path.getsize(file) != entry["size"]:
            problems.append(f"{rel}: {os.path.getsize(file)} bytes, manifest says {entry['size']}")
        elif level == "full" and file_sha256(file) != entry["sha256"]:
            problems.append(f"{rel}: checksum differs from the manifest (the file was changed)")
    if problems:
        raise CheckpointDamagedError(
            f"checkpoint {path} is damaged ({len(problems)} file(s)): " + "; ".join(problems[:5])
        )
    return True


def step_dirs(model_dir: str) -> list[tuple[int, str]]:
    """Every ``checkpoint_<step>`` folder in ``model_dir`` (complete or not), by step."""
    if not os.path.isdir(model_dir):
        return []
    found = []
    for name in os.listdir(model_dir):
        match = STEP_DIR.match(name)
        path = os.path.join(os.path.abspath(model_dir), name)
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_good_checkpoint(
    model_dir: str,
    *,
    level: str = "full",
    warn: Callable[[str], None] | None = None,
    on_damaged: Callable[[int, str], None] | None = None,
) -> tuple[int, str] | None:
    """(step, path) of the newest checkpoint that verifies, or None when there is none.

    Each newer damaged/incomplete one is reported through ``warn`` (by name, with the
    reason) and passed to ``on_damaged(step, path)`` (training moves it aside).
    """
    for step, path in reversed(step_dirs(model_dir)):
        try:
            verified = verify_checkpoint(path, level=level)
        except CheckpointDamagedError as e:
            if warn is not None:
                warn(f"{e}; skipping it and using the previous checkpoint")
            if on_damaged is not None:
                on_damaged(step, path)
            continue
        if not verified and warn is not None:
            warn(f"checkpoint {path} has no {MANIFEST}: complete but unverified, using it")
        return step, path
    return None


def move_aside(path: str) -> str:
    """Rename a damaged checkpoint to ``<name>.damaged[-k]`` (kept for inspection)."""
    target, k = f"{path}.damaged", 1
    while os.path.exists(target):
        target, k = f"{path}.damaged-{k}", k + 1
    os.replace(path, target)
    return target
