"""Check a user's inputs before anything expensive runs, and report a mistake as one message.

Every check raises ``InputError`` (a ``ValueError``) whose text names the bad input and the
fix, with a "did you mean" suggestion for misspelt names. ``run_cli`` wraps a command's
``main``: an ``InputError`` (or a gin configuration error, which subclasses it) prints
``error: <message>`` on stderr and exits with status 2 instead of showing a traceback.

The checks here are pure Python on flag values and gin macro values; the gin-name checks
(unknown macros and bindings) live in ``gin_flags.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import sys
import traceback
import types
import typing
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, NoReturn

EXIT_USAGE = 2

# The macros `flan_moe.cli.train` reads (its `query_macro` calls; a test keeps them in sync).
TRAIN_MACROS: tuple[str, ...] = (
    "MODEL_DIR",
    "TRAIN_STEPS",
    "MIXTURE_OR_TASK_NAME",
    "TASK_FEATURE_LENGTHS",
    "BATCH_SIZE",
    "INITIAL_CHECKPOINT_PATH",
    "MODEL_NAME",
    "MODEL_OVERRIDES",
    "RUN_MODEL_OVERRIDES",
)


class InputError(ValueError):
    """A mistake in the user's flags, gin files or data: shown as one message, exit 2."""


def did_you_mean(name: str, known: Collection[str]) -> str:
    """`` (did you mean 'X'?)`` for the closest known name, else an empty string."""
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    if not close:
        lowered = {str(k).lower(): str(k) for k in known}
        close = [lowered[str(name).lower()]] if str(name).lower() in lowered else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(what: str, value: str, known: Collection[str], fix: str) -> None:
    if value not in known:
        names = sorted(known)
        more = f" ... ({len(names) - 24} more)" if len(names) > 24 else ""
        raise InputError(
            f"unknown {what} {value!r}{did_you_mean(value, known)}; "
            f"known: {', '.join(names[:24])}{more}. {fix}"
        )


def csv_list(flag: str, text: str, *, example: str) -> list[str]:
    """The non-empty parts of a comma list; an empty list is an error."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise InputError(f"{flag} is empty; give a comma-separated list, e.g. {flag}={example}")
    return parts


def int_list(flag: str, text: str, *, example: str, minimum: int = 0) -> list[int]:
    values = []
    for part in csv_list(flag, text, example=example):
        try:
            value = int(part)
        except ValueError:
            raise InputError(
                f"{flag}: {part!r} is not a whole number; write e.g. {flag}={example}"
            ) from None
        if value < minimum:
            raise InputError(f"{flag}: {value} must be >= {minimum}; e.g. {flag}={example}")
        values.append(value)
    return values


def check_positive(flag: str, value: Any, *, allow_none: bool = True, minimum: float = 1) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise InputError(f"{flag} must be a number >= {minimum:g}, got {value!r}")


# --------------------------------------------------------------------------------- eval


def _check_data(suites: Sequence[str], data_dir: str | None) -> None:
    from flan_moe.data import paths  # pure Python

    root = paths.data_dir(data_dir)
    needs = {
        "mmlu": "mmlu",
        "bbh": "bbh",
        "gsm8k": "flan_mini/heldout",
        "svamp": "flan_mini/heldout",
    }
    source = "--data_dir" if data_dir else f"${paths.DATA_DIR_ENV}"
    for suite in suites:
        if not (root / needs[suite]).is_dir():
            raise InputError(
                f"suite {suite} needs {root / needs[suite]} but it does not exist ({source}="
                f"{str(root)!r}); point {source} at the data (e.g. ../shared/data) or run "
                f"`{paths.FETCH_HINT}`"
            )


def check_eval_args(args: argparse.Namespace, suites: Collection[str]) -> None:
    """Every `flan_moe.cli.eval` flag value, before any data or checkpoint is read."""
    chosen = csv_list("--suites", args.suites, example="mmlu,bbh")
    for suite in chosen:
        check_choice("suite", suite, suites, "Pass e.g. --suites=mmlu,bbh.")
    for mode in csv_list("--mode", args.mode, example="direct,cot"):
        check_choice("mode", mode, ("direct", "cot"), "Pass --mode=direct, cot or direct,cot.")
    int_list("--shots", args.shots, example="0,5")
    if args.steps:
        int_list("--steps", args.steps, example="1000,2000")
    for flag in ("batch_size", "beam_size", "subsample", "max_input_length"):
        check_positive(f"--{flag}", getattr(args, flag))
    for flag in ("max_decode_length", "max_option_length"):
        check_positive(f"--{flag}", getattr(args, flag))
    check_positive("--top_k", args.top_k, minimum=0)
    check_positive("--alpha", args.alpha, minimum=0)
    if args.decode == "sample" and not args.temperature > 0:
        raise InputError(f"--temperature must be > 0 for --decode=sample, got {args.temperature}")
    _check_mesh_flags(args)
    if args.checkpoint_dir and not os.path.isdir(args.checkpoint_dir):
        raise InputError(
            f"--checkpoint_dir {args.checkpoint_dir!r} does not exist; pass a MODEL_DIR written "
            "by `python -m flan_moe.cli.train` or one of its checkpoint_<step> directories"
        )
    if args.output_dir and os.path.isfile(args.output_dir):
        raise InputError(f"--output_dir {args.output_dir!r} is a file; pass a directory")
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise InputError(f"--data_dir {args.data_dir!r} does not exist; pass the data root")
    _check_data(chosen, args.data_dir)


def _check_mesh_flags(args: argparse.Namespace) -> None:
    sizes = {f: getattr(args, f) for f in ("data_parallel", "expert_parallel", "model_parallel")}
    for flag, size in sizes.items():
        if size == 0 or size < -1:
            raise InputError(f"--{flag} must be >= 1 or -1 (the remaining devices), got {size}")
    if list(sizes.values()).count(-1) > 1:
        raise InputError("only one of --data_parallel/--expert_parallel/--model_parallel may be -1")


# ---------------------------------------------------------------------------- experiment


def check_experiment_args(args: argparse.Namespace) -> None:
    """`flan_moe.cli.experiment` flags: the experiment name, the scale, the output dir."""
    from flan_moe.experiments import settings

    target = args.experiment
    if target and not target.endswith(".gin") and os.sep not in target:
        known = [*settings.EXPERIMENTS, *settings.ALIASES]
        check_choice("experiment", target, known, "See --list.")
    if target and target.endswith(".gin") and not os.path.isfile(target):
        raise InputError(f"experiment file {target!r} does not exist; see gin_configs/experiments")
    if args.scale is not None:
        check_choice("scale", args.scale, settings.SCALES, "Pass e.g. --scale=tiny.")
    if os.path.isfile(args.output_dir):
        raise InputError(f"--output_dir {args.output_dir!r} is a file; pass a directory")


# --------------------------------------------------------------------------------- train


def _is_count(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_train_macros(query: Callable[..., Any]) -> None:
    """The train command's macro values (``query(name, default)`` reads one)."""
    from flan_moe.model.config import SIZES

    model = query("MODEL_NAME")
    sizes = [*SIZES, "from_initial_checkpoint"]  # the latter: INITIAL_CHECKPOINT_PATH's config
    check_choice("MODEL_NAME", str(model), sizes, "Use a file from gin_configs/models/.")
    for name in ("TRAIN_STEPS", "BATCH_SIZE"):
        value = query(name)
        if not _is_count(value, int(name != "TRAIN_STEPS")):
            raise InputError(
                f"{name} must be a whole number >= {int(name != 'TRAIN_STEPS')}, got {value!r}; "
                f"e.g. --gin.{name}={'100' if name == 'TRAIN_STEPS' else '32'}"
            )
    lengths = query("TASK_FEATURE_LENGTHS")
    ok = isinstance(lengths, dict) and set(lengths) == {"inputs", "targets"}
    if not ok or not all(_is_count(v, 1) for v in lengths.values()):
        raise InputError(
            f"TASK_FEATURE_LENGTHS must be {{'inputs': n, 'targets': m}} with positive whole "
            f'numbers, got {lengths!r}; e.g. --gin.TASK_FEATURE_LENGTHS=\'{{"inputs": 512, '
            '"targets": 128}\''
        )
    for name in ("MODEL_DIR", "MIXTURE_OR_TASK_NAME"):
        value = query(name)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{name} must be a non-empty string, got {value!r}")
    if os.path.isfile(query("MODEL_DIR")):
        raise InputError(f"MODEL_DIR {query('MODEL_DIR')!r} is a file; pass a directory")
    initial = query("INITIAL_CHECKPOINT_PATH", None)
    remote = "://" in str(initial)  # gs://... is checked by the loader
    if initial is not None and not remote and not Path(str(initial)).exists():
        raise InputError(
            f"INITIAL_CHECKPOINT_PATH {initial!r} does not exist; pass a checkpoint_<step> "
            "directory (or a MODEL_DIR) written by training, or leave it None"
        )
    for name in ("MODEL_OVERRIDES", "RUN_MODEL_OVERRIDES"):
        value = query(name, None)
        if value is not None and not isinstance(value, dict):
            raise InputError(f"{name} must be a dict like {{'dropout_rate': 0.1}}, got {value!r}")


def check_mixture(name: str) -> None:
    """A registered SeqIO task or mixture (or ``synthetic``); imports the task registry."""
    from flan_moe.training.synthetic import SYNTHETIC_NAME

    if name == SYNTHETIC_NAME:
        return
    from flan_moe.cli.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    import seqio

    from flan_moe.cli.task_registry import register_tasks

    register_tasks()

    known = [*seqio.TaskRegistry.names(), *seqio.MixtureRegistry.names(), SYNTHETIC_NAME]
    check_choice(
        "MIXTURE_OR_TASK_NAME", name, known, "Pass a registered task or mixture (WORKSPACE.md)."
    )


def build(configurable: Callable[..., Any], *args: Any, fix: str = "", **kwargs: Any) -> Any:
    """Call a gin-configured dataclass or function; a bad bound value is an ``InputError``
    naming it (``fix``: the advice, default: fix its binding)."""
    name = getattr(configurable, "__name__", str(configurable))
    is_dataclass = isinstance(configurable, type) and dataclasses.is_dataclass(configurable)
    if is_dataclass:  # the values bound in gin, checked before the class validates them
        check_field_types(configurable, _gin_literals(configurable))
    try:
        config = configurable(*args, **kwargs)
    except InputError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as e:
        message = str(e).split("\n  In call to configurable")[0]  # gin's context line
        raise InputError(
            f"{name}: {message}; {fix or f'fix its binding `{name}.<field> = ...`'}"
        ) from e
    if is_dataclass:  # values that came through macros
        fields = dataclasses.fields(config)
        check_field_types(configurable, {f.name: getattr(config, f.name) for f in fields})
    return config


def _gin_literals(configurable: Any) -> dict[str, Any]:
    """The literal values gin binds to ``configurable`` (``%MACRO`` references left out)."""
    import gin

    for selector, registered in gin.config._REGISTRY.items():  # no public reverse lookup
        if registered.wrapper is configurable or registered.wrapped is configurable:
            bound = gin.get_bindings(selector)
            reference = gin.config.ConfigurableReference
            return {k: v for k, v in bound.items() if not isinstance(v, reference)}
    return {}


def check_field_types(cls: type, values: dict[str, Any]) -> None:
    """Each value for a field of dataclass ``cls`` has the field's annotated type (ints pass
    for floats, a list for a tuple)."""
    hints = typing.get_type_hints(cls)
    name = cls.__name__
    for field in dataclasses.fields(cls):
        if field.name not in values:
            continue
        value = values[field.name]
        hint = hints.get(field.name, Any)
        if not _matches(value, hint):
            raise InputError(
                f"{name}.{field.name} = {value!r} is not {_describe(hint)}"
                f"{_suggest(value, hint)}; fix the binding, "
                f"e.g. --gin.{name}.{field.name}={_example(hint, field.default)}"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    if origin is not None and isinstance(origin, type):
        return isinstance(value, origin) or (origin is tuple and isinstance(value, list))
    return True


def _suggest(value: Any, hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal and isinstance(value, str):
        return did_you_mean(value, [str(a) for a in typing.get_args(hint)])
    return ""


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if hint is type(None):
        return "None"
    name = getattr(hint, "__name__", str(hint))
    return f"{'an' if name[:1] in 'aeiou' else 'a'} {name}"


def _example(hint: Any, default: Any) -> str:
    if default is not dataclasses.MISSING and default is not None:
        return repr(default) if not isinstance(default, str) else f"'\"{default}\"'"
    return "..."


# ----------------------------------------------------------------------------------- main


def run_cli(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a command's ``main``; an ``InputError`` becomes one stderr line and exit status 2."""
    try:
        result = main(argv)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return result if isinstance(result, int) else 0


def run_cli_and_exit(
    main: Callable[[Sequence[str] | None], Any], *, ordinary_exit: bool = False
) -> NoReturn:
    """``run_cli``, then ``fast_exit.exit_now`` with its status; an uncaught error exits 1.

    An exception is printed in full and then also leaves through ``exit_now``: unwinding
    normally would run TensorFlow's tf.data iterator destructors, which wait for their
    parallel-map threads and, after an exception mid-iteration, wait for ever, so a failed
    stage hung instead of failing. ``ordinary_exit`` (multi-host training, whose
    jax.distributed shutdown handshake runs at exit) exits the ordinary way.
    """
    from flan_moe.cli.fast_exit import exit_now

    try:
        code = run_cli(main)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 130
    except BaseException:  # printed in full, then a failing status
        traceback.print_exc()
        code = 1
    if ordinary_exit:
        sys.exit(code)
    exit_now(code)
