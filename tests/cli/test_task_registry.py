"""The CLI layer loads the task registry under the project's own name, once."""

import sys
from pathlib import Path

from flan_moe.cli.task_registry import PACKAGE, register_tasks


def test_register_tasks_loads_one_package_under_the_project_name(data_dir):
    import seqio

    tasks = register_tasks()
    assert tasks.__name__ == PACKAGE == "flan_moe_tasks"
    assert register_tasks() is tasks  # idempotent: a second import would register twice
    # The checkout's tasks/ folder, or the installed copy of it.
    assert Path(tasks.__file__).parent.name in ("tasks", PACKAGE)
    assert "tasks" not in sys.modules  # never under the generic top-level name
    assert tasks.local_flan.__name__ == f"{PACKAGE}.local_flan"
    assert {"flan_local", "flan2022_local"} <= set(seqio.MixtureRegistry.names())
