"""The experiment registry from the command line.

    python -m flan_moe.cli.registry rebuild --output_dir experiments_out
    python -m flan_moe.cli.registry list --output_dir experiments_out

``rebuild`` reconstructs the database from the experiment folders (the source of truth):
delete ``registry.sqlite`` (or point ``--db`` at an empty PostgreSQL database) and run it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flan_moe.cli import validation
from flan_moe.cli.worker import add_registry_flags, open_registry


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("rebuild", "list"))
    add_registry_flags(parser)
    args = parser.parse_args(argv)
    from flan_moe.service import folders, store
    from flan_moe.service.models import Experiment

    registry = open_registry(args)
    if args.command == "rebuild":
        roots = folders.rebuild(registry, args.output_dir, on_problem=folders.print_problem)
        print(f"rebuilt {len(roots)} experiment(s) into {registry.url}")
    with registry.session() as session:
        for exp in session.query(Experiment).order_by(Experiment.id):
            p = store.progress(exp)
            print(f"{exp.id}\t{exp.name}\t{exp.scale}\t{p.status}\t{p.done}/{p.total}\t{exp.root}")
    registry.close()
    return 0


if __name__ == "__main__":
    sys.exit(validation.run_cli(main))
