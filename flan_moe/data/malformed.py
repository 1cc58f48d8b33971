"""Errors for malformed data records that name the file, the line and what was expected.

Every reader of the data files parses each record inside ``record_context(path, line,
expected=...)``: a missing key, a wrong type or bad JSON in that record becomes a
``MalformedRecordError`` such as ``.../bbh/bbh/navigate.json example 3: missing key 'target'
(expected {"input": ..., "target": ...}); fix or remove that record`` instead of a bare
``KeyError: 'target'``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any


class MalformedRecordError(ValueError):
    """A data record that cannot be read; the message names the file and the record."""


def _describe(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"missing key {error.args[0]!r}" if error.args else "missing key"
    if isinstance(error, json.JSONDecodeError):
        return f"invalid JSON ({error.msg} at column {error.colno})"
    return f"{type(error).__name__}: {error}"


@contextlib.contextmanager
def record_context(path: str | os.PathLike, where: str, *, expected: str) -> Iterator[None]:
    """Re-raise a parsing error inside the block as a ``MalformedRecordError`` naming
    ``path`` and ``where`` (e.g. ``"line 12"``) and the ``expected`` layout."""
    try:
        yield
    except MalformedRecordError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise MalformedRecordError(
            f"{path} {where}: {_describe(e)} (expected {expected}); fix or remove that record"
        ) from e


def read_jsonl(path: str | os.PathLike, *, expected: str) -> list[tuple[int, Any]]:
    """(1-based line number, parsed object) for each non-blank line of a JSON-lines file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                with record_context(path, f"line {number}", expected=expected):
                    value = json.loads(line)
                    if not isinstance(value, dict):
                        raise TypeError(f"a JSON {type(value).__name__}, not an object")
                rows.append((number, value))
    return rows


def read_json(path: str | os.PathLike, *, expected: str) -> Any:
    """A whole JSON file; invalid JSON names the file."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    with record_context(path, "(whole file)", expected=expected):
        return json.loads(text)
