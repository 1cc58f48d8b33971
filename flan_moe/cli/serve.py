"""The experiment dashboard, JSON API and local workers.

    python -m flan_moe.cli.serve --output_dir experiments_out
    python -m flan_moe.cli.serve --output_dir out --port 8080 --token "$TOKEN" --slice 0 --slice 1

Serves http://127.0.0.1:PORT (only there unless ``--host`` says otherwise). Reading needs
nothing; writes (submit, cancel, retry) need ``Authorization: Bearer <token>``: the
``--token`` given, or a random one printed at start-up (``--read_only``: none). One worker
process per ``--slice`` (default one slice, ``all``) runs queued stages; ``--no_workers``
serves only (run ``python -m flan_moe.cli.worker`` elsewhere). An empty registry is
rebuilt from the folders at start.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence

from flan_moe.cli import validation
from flan_moe.cli.worker import add_registry_flags, open_registry


def worker_commands(args: argparse.Namespace, url: str) -> list[list[str]]:
    if args.no_workers:
        return []
    return [
        [sys.executable, "-m", "flan_moe.cli.worker", f"--output_dir={args.output_dir}",
         f"--db={url}", f"--devices={devices}"]
        for devices in (args.slice or ["all"])
    ]  # fmt: skip


def start_workers(commands: list[list[str]]) -> list[subprocess.Popen]:
    from flan_moe.experiments import supervise

    # Each worker gets SIGTERM if this server dies (supervise's PR_SET_PDEATHSIG set-up).
    return [
        subprocess.Popen(command, preexec_fn=supervise._die_with_parent(os.getpid()))
        for command in commands
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_registry_flags(parser)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--token",
        default=os.environ.get("FLAN_MOE_SERVICE_TOKEN"),
        help="write token (default: $FLAN_MOE_SERVICE_TOKEN, else a random one, printed)",
    )
    parser.add_argument("--read_only", action="store_true", help="no writes at all")
    parser.add_argument("--slice", action="append", help="a worker's devices (repeatable)")
    parser.add_argument("--no_workers", action="store_true", help="serve only")
    args = parser.parse_args(argv)
    if args.read_only and args.token:
        raise validation.InputError("--read_only and --token exclude each other")
    import uvicorn

    from flan_moe.service import app as app_lib
    from flan_moe.service import auth, folders, worker
    from flan_moe.service.models import Experiment

    for devices in args.slice or []:
        try:
            worker.device_env(devices)
        except ValueError as e:
            raise validation.InputError(str(e)) from None
    registry = open_registry(args)
    with registry.session() as session:
        empty = session.query(Experiment).count() == 0
    if empty:
        roots = folders.rebuild(registry, args.output_dir, on_problem=folders.print_problem)
        print(f"registry {registry.url}: rebuilt {len(roots)} experiment(s) from the folders")
    token = None if args.read_only else (args.token or auth.new_token())
    app = app_lib.create_app(registry, args.output_dir, token=token)
    workers = start_workers(worker_commands(args, registry.url))
    print(f"Dashboard: http://{args.host}:{args.port}/", flush=True)
    if token and not args.token:
        print(f"Write token (paste it into the page): {token}", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait()
    return 0


if __name__ == "__main__":
    sys.exit(validation.run_cli(main))
