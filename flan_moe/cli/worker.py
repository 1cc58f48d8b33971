"""Run queued stages of the experiment registry on one device slice.

    python -m flan_moe.cli.worker --output_dir experiments_out --devices 0,1
    python -m flan_moe.cli.worker --output_dir /shared/out --db postgresql+psycopg://lab@db/flan

One worker runs one stage at a time on its slice (``all``, ``cpu`` or GPU ids); start one
per slice. ``serve`` starts them for you (``--slice``); start more by hand, on this or
other machines sharing the output folder and a PostgreSQL registry. A stage whose worker
died is queued again and resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from flan_moe.cli import validation


def add_registry_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output_dir", default="experiments_out", help="experiments root")
    parser.add_argument(
        "--db",
        default=None,
        help="registry URL (default sqlite:///<output_dir>/registry.sqlite; a lab's: "
        "postgresql+psycopg://USER:PASSWORD@HOST/DB)",
    )


def open_registry(args: argparse.Namespace):
    from flan_moe.service import store

    return store.Registry(args.db or store.default_url(args.output_dir))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_registry_flags(parser)
    parser.add_argument("--devices", default="all", help="all | cpu | GPU ids like 0,1")
    parser.add_argument("--poll_seconds", type=float, default=2.0)
    parser.add_argument("--heartbeat_seconds", type=float, default=5.0)
    parser.add_argument(
        "--stale_after_seconds",
        type=float,
        default=120.0,
        help="a running stage whose worker (on another host) has not beaten for this long is "
        "queued again",
    )
    parser.add_argument("--exit_when_idle", action="store_true", help="stop when nothing is ready")
    args = parser.parse_args(argv)
    from flan_moe.service import worker

    try:
        config = worker.WorkerConfig(
            Path(args.output_dir), devices=args.devices, poll_seconds=args.poll_seconds,
            heartbeat_seconds=args.heartbeat_seconds,
            stale_after_seconds=args.stale_after_seconds,
        )  # fmt: skip
    except ValueError as e:
        raise validation.InputError(str(e)) from None
    registry = open_registry(args)
    w = worker.Worker(registry, config)
    w.say(f"registry {registry.url}; output {args.output_dir}")
    try:
        w.run(exit_when_idle=args.exit_when_idle)
    except KeyboardInterrupt:
        w.say("stopped")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(validation.run_cli(main))
