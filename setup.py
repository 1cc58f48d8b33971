"""Package list for setuptools (metadata lives in pyproject.toml).

The repository's top-level ``tasks/`` folder is installed as ``flan_moe_tasks``, so
the project claims no generic top-level name such as ``tasks``; load it with
``flan_moe.cli.task_registry.register_tasks()``. pyproject.toml cannot map a found
package to a new name, hence this file.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["flan_moe", "flan_moe.*"]), "flan_moe_tasks"],
    package_dir={"flan_moe_tasks": "tasks"},
)
