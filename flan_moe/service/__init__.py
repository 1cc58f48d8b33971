"""The pipeline as a service: a registry of experiments, runs and stages (SQLAlchemy),
workers that run queued stages on declared device slices, cluster submission through
submitit, and a FastAPI dashboard with a JSON API.

The experiment folders stay the source of truth: a worker runs a stage through the
same ``pipeline.run_pipeline`` the CLI uses (the stage and its finished ancestors), so
``STAGE.json`` / ``DONE.json`` / ``FAILED.json`` / ``stage.log`` are written exactly as a
``scripts/run_experiment.py`` run writes them, and ``registry rebuild`` reconstructs the
database from the folders.

Modules: ``submission`` (name + scale + overrides -> the runner's plan), ``models``
(tables), ``store`` (the registry's operations), ``folders`` (stage states read from the
folders, rebuild), ``worker``, ``cluster`` (submitit), ``curves`` (TensorBoard event
files), ``auth``, ``app`` (FastAPI).
"""
