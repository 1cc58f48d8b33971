"""The CLI layer's request for the SeqIO task registry (the top-level ``tasks/`` folder).

``tasks/`` sits at the top of the repository but is installed as ``flan_moe_tasks``
(``setup.py``: ``package_dir={"flan_moe_tasks": "tasks"}``), so the wheel claims no
generic top-level name. Nothing below the CLI imports it: ``flan_moe.data`` reads
registered names only, and the CLIs (``train``, the input checks in ``validation``)
call ``register_tasks()`` first. Tests that need the registry call it too.

``register_tasks()`` imports the package once per process, always under the one name
``flan_moe_tasks`` (a second name would register every task twice):

* installed (``pip install .`` or ``-e .``): the installed ``flan_moe_tasks``;
* a checkout that was not installed: the repository's ``tasks/`` folder beside the
  ``flan_moe`` package, loaded under that same name.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = "flan_moe_tasks"


def register_tasks() -> ModuleType:
    """Register every task and mixture (idempotent); return the tasks package."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    try:
        return importlib.import_module(PACKAGE)
    except ModuleNotFoundError as e:
        if e.name != PACKAGE:
            raise
    return _load_checkout_tasks()


def _load_checkout_tasks() -> ModuleType:
    folder = Path(__file__).resolve().parents[2] / "tasks"
    init = folder / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(
            f"no task registry: {PACKAGE!r} is not installed and there is no {init} "
            "beside the flan_moe package; install the project (pip install .) or run "
            "from a checkout of the repository",
            name=PACKAGE,
        )
    spec = importlib.util.spec_from_file_location(
        PACKAGE, init, submodule_search_locations=[str(folder)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module
