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
import inspect
import os
import re
import tokenize
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import gin

from flan_moe.cli.validation import InputError, did_you_mean

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REQUIRED = object()


class GinConfigError(InputError):
    """A gin file or binding that does not parse, names nothing, or is never read."""


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
                raise GinConfigError(f"flag {name} needs a value")
            value, i = args[i + 1], i + 1
        if name == "--gin_file":
            flags.gin_files.append(value)
        elif name == "--gin_search_paths":
            flags.search_paths.extend(p for p in value.split(",") if p)
        elif name == "--gin_bindings":
            flags.bindings.append(value)
        elif name.startswith("--gin."):
            if not eq:
                raise GinConfigError(f"{arg!r}: write --gin.NAME=VALUE")
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
    raise GinConfigError(
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
    except (ValueError, SyntaxError, tokenize.TokenError) as e:
        raise GinConfigError(
            f"bad gin configuration ({_explain(e)}). Files: {files}; bindings: {flags.bindings}"
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
    (the parameters actually used so far) into ``model_dir``; returns the paths.
    Multi-host: only the first host writes (the others return an empty list)."""
    import jax

    if jax.process_index() != 0:
        return []
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


# ------------------------------------------------------------------ names that gin would ignore


def _configurables() -> dict[str, Any]:
    """Every registered configurable by its short name (``OptimizerConfig``, ``make_mesh``)."""
    registry = gin.config._REGISTRY  # gin has no public listing of configurables
    return {c.name: c for _, c in registry.items()}


def _explain(error: Exception) -> str:
    """Gin's message plus a "did you mean" for an unknown configurable or parameter."""
    text = str(error)
    if isinstance(error, (SyntaxError, tokenize.TokenError)):
        return (
            f"gin syntax error: {text}; a binding is `NAME = VALUE` or `Configurable.param = "
            "VALUE` with a Python literal VALUE (quote strings, close brackets)"
        )
    configurables = _configurables()
    m = re.search(r"No bindings specified for '([^/']+)/gin.macro'", text)
    if m:
        defined = [scope for scope, selector in gin.config._CONFIG if selector == "gin.macro"]
        return (
            f"gin macro %{m.group(1)} is used but never set{did_you_mean(m.group(1), defined)}; "
            f"set it with --gin.{m.group(1)}=... or in a gin file"
        )
    m = re.search(r"No configurable matching '([^']+)'", text)
    if m:
        return f"{text.splitlines()[0]}{did_you_mean(m.group(1), configurables)}"
    m = re.search(r"Configurable '([^']+)' doesn't have a parameter named '([^']+)'", text)
    if m and m.group(1) in configurables:
        known = _parameters(configurables[m.group(1)])
        return (
            f"{text.splitlines()[0]}{did_you_mean(m.group(2), known)}; "
            f"its parameters: {', '.join(known)}"
        )
    m = re.search(r"has denylisted kwarg '([^']+)'", text)
    if m:
        macro = m.group(1).upper()
        return f"{text.splitlines()[0]} (set it with its macro: --gin.{macro}=...)"
    return " ".join(text.split())


def _parameters(configurable: Any) -> list[str]:
    denied = set(configurable.denylist or ())
    params = inspect.signature(configurable.wrapped).parameters
    return [p for p in params if p not in denied and p != "self"]


def _macro_references(value: Any) -> set[str]:
    """Names of the macros (``%NAME``) a bound value refers to, searched recursively."""
    if isinstance(value, gin.config.ConfigurableReference):
        selector = value.scoped_selector
        return {selector.split("/")[0]} if selector.endswith("gin.macro") else set()
    if isinstance(value, dict):
        return set().union(*(_macro_references(v) for v in value.values()))
    if isinstance(value, (list, tuple, set)):
        return set().union(*(_macro_references(v) for v in value))
    return set()


def check_macros(read_by_command: Collection[str]) -> None:
    """Every macro set in the parsed config is read by the command or used as ``%NAME``, and
    every ``%NAME`` is set. A misspelt macro (``BATCH_SIZ``, ``INITIAL_CHECKPOINT``) would
    otherwise be ignored silently; the error suggests the closest known name."""
    defined, used = set(), set()
    for (scope, selector), params in gin.config._CONFIG.items():
        if selector == "gin.macro":
            defined.add(scope)
        used |= _macro_references(params)
    known = set(read_by_command) | used
    for name in sorted(defined - known):
        raise GinConfigError(
            f"gin macro {name} is set but nothing reads it{did_you_mean(name, known)}; "
            f"the macros this command reads: {', '.join(sorted(read_by_command))}"
        )
    for name in sorted(used - defined):
        raise GinConfigError(
            f"gin macro %{name} is used but never set{did_you_mean(name, defined)}; "
            f"set it with --gin.{name}=... or in a gin file"
        )
