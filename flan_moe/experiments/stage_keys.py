"""What determines a stage's output, as a hash: the stage's config key.

A stage's own fingerprint (``command_fingerprint``) hashes its command line (without
the interpreter's path) and the text of every gin file it names, following gin
``include`` lines, so editing a model or run file changes the key of every stage that
uses it. The pipeline then combines it with its dependencies' recorded keys and
outputs (``stage_key``): a re-trained upstream model changes every downstream key.

``checkpoint_digest`` is a train stage's output: a hash of the SHA-256s of the params
files in its final checkpoint's manifest (the orbax metadata with its timestamps is
left out).

Not hashed: the data files' contents (their task and mixture names are in the
command) and the code; use ``--force`` after changing either.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence

_INCLUDE = re.compile(r"""^\s*include\s+['"]([^'"]+)['"]""", re.MULTILINE)


def _digest(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def gin_file_texts(path: str, seen: dict[str, str] | None = None) -> dict[str, str]:
    """{path: text} of a gin file and every file it includes (recursively)."""
    seen = {} if seen is None else seen
    path = os.path.abspath(path)
    if path in seen:
        return seen
    if not os.path.exists(path):
        seen[path] = "<missing>"
        return seen
    with open(path) as f:
        seen[path] = f.read()
    for include in _INCLUDE.findall(seen[path]):
        candidates = [include, os.path.join(os.path.dirname(path), include)]
        found = next((c for c in candidates if os.path.exists(c)), include)
        gin_file_texts(found, seen)
    return seen


def command_fingerprint(command: Sequence[str]) -> str:
    """The hash of a ``python -m flan_moe.cli.X ...`` command and its gin files."""
    args = list(command[1:])  # not the interpreter's path
    gin_texts: dict[str, str] = {}
    for arg in args:
        if arg.startswith("--gin_file="):
            gin_file_texts(arg.split("=", 1)[1], gin_texts)
    return _digest({"args": args, "gin_files": gin_texts})


def stage_key(fingerprint: str, inputs: Mapping[str, Mapping[str, object]]) -> str:
    """The key of a stage: its own fingerprint + each dependency's recorded key/output."""
    return _digest(
        {
            "fingerprint": fingerprint,
            "inputs": {
                name: {"key": record.get("key"), "output": record.get("output")}
                for name, record in sorted(inputs.items())
            },
        }
    )


def checkpoint_digest(checkpoint: str) -> str:
    """Hash of the params part of a checkpoint's manifest (see module docstring)."""
    from flan_moe.training.integrity import read_manifest  # pure Python, no JAX

    manifest = read_manifest(checkpoint) or {"files": {}}
    return _digest(
        sorted(v["sha256"] for k, v in manifest["files"].items() if k.startswith("params/"))
    )
