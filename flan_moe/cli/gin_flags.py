"""t5x-style gin flags for every flan-moe command line.

Flags understood (anywhere in argv; everything else is returned to the caller):

* ``--gin_file=PATH`` (repeatable): a gin file, found as given or under a search path;
* ``--gin_search_paths=DIR[,DIR...]`` (repeatable): where gin files and their
  ``include``s are looked up (the current directory and the repository root are
  always searched);
* ``--gin.NAME=VALUE``: the binding ``NAME = VALUE`` (a macro such as ``MODEL_DIR``
  or a parameter such as ``OptimizerConfig.learning_rate``), applied after all files.
  VALUE is a Python/gin literal (``50``, ``1e-3``, ``{"inputs": 512}``,
  ``@ref``, ``%MACRO``); anything else is taken as a string, so
  ``--gin.MODEL_DIR=/tmp/x`` needs no quotes;
* ``--gin_bindings=BINDING`` (repeatable): a raw gin binding line.

Typical use in a command::

    flags, rest = split_gin_flags(sys.argv[1:])
    parse_gin(flags)
    model_dir = query_macro("MODEL_DIR")
    ...
    write_operative_config(model_dir)
"""

from __future__ import annotations

import ast
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gin

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED = object()


@dataclass(frozen=True)
class GinFlags:
    gin_files: list[str] = field(default_factory=list)
    bindings: list[str] = field(default_factory=list)
    search_paths: list[str] = field(default_factory=list)


def gin_value(text: str) -> str:
    """The gin text for a flag value: literals and references as given, else a quoted string."""
    stripped = text.strip()
    if stripped.startswith(("@", "%")):
        return stripped
    try:
        ast.literal_eval(stripped)
        return stripped
    except (ValueError, SyntaxError):
        return repr(text)


def split_gin_flags(argv: Sequence[str]) -> tuple[GinFlags, list[str]]:
    """(the gin flags, the remaining arguments) of a command line."""
    flags = GinFlags()
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        takes_value = name in ("--gin_file", "--gin_search_paths", "--gin_bindings")
        if takes_value and not eq:
            if i + 1 >= len(args):
                raise ValueError(f"flag {name} needs a value")
            value, i = args[i + 1], i + 1
        if name == "--gin_file":
            flags.gin_files.append(value)
        elif name == "--gin_search_paths":
            flags.search_paths.extend(p for p in value.split(",") if p)
        elif name == "--gin_bindings":
            flags.bindings.append(value)
        elif name.startswith("--gin."):
            if not eq:
                raise ValueError(f"{arg!r}: write --gin.NAME=VALUE")
            flags.bindings.append(f"{name[len('--gin.') :]} = {gin_value(value)}")
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def _find(path: str, search_paths: Sequence[str]) -> str:
    if os.path.isfile(path):
        return path
    for directory in search_paths:
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"gin file {path!r} not found as given nor under the search paths {list(search_paths)}; "
        "check the path or add its directory with --gin_search_paths"
    )


def parse_gin(flags: GinFlags, *, finalize: bool = True) -> None:
    """Parse the files then the bindings (later wins). Clears earlier gin state first."""
    gin.clear_config(clear_constants=False)
    search_paths = [*flags.search_paths, os.getcwd(), REPO_ROOT]
    for directory in search_paths:
        gin.add_config_file_search_path(directory)
    files = [_find(f, search_paths) for f in flags.gin_files]
    try:
        gin.parse_config_files_and_bindings(files, flags.bindings, finalize_config=finalize)
    except (ValueError, SyntaxError) as e:
        raise ValueError(
            f"bad gin configuration ({e}). Files: {files}; bindings: {flags.bindings}"
        ) from e


def query_macro(name: str, default: Any = REQUIRED) -> Any:
    """The value of macro ``name``; without a default a missing macro is a clear error."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        if default is REQUIRED:
            raise ValueError(
                f"gin macro {name} is not set: pass --gin.{name}=... or set it in a gin file"
            ) from None
        return default


def write_operative_config(model_dir: str) -> list[str]:
    """Write ``config.gin`` (every binding, macros included) and ``operative_config.gin``
    (the parameters actually used so far) into ``model_dir``; returns the paths."""
    os.makedirs(model_dir, exist_ok=True)
    written = []
    for filename, text in (
        ("config.gin", gin.config_str()),
        ("operative_config.gin", gin.operative_config_str()),
    ):
        path = os.path.join(model_dir, filename)
        with open(path, "w") as f:
            f.write(text)
        written.append(path)
    return written
