"""What the experts learn: ``python -m flan_moe.cli.analyze ...``.

Runs a checkpoint over held-out suites (``--suites``) and/or JSON-lines files (``--jsonl``,
rows ``{"task", "inputs", "targets"}``) with teacher forcing and writes, per sparse layer
(encoder and decoder separately, padding left out): expert load per task (normalised, with
its Jensen-Shannon divergence from the global load), how often consecutive tokens share
their first choice / any of their top-2 choices against the random baselines, the top
tokens of each expert by count and by lift, router entropy and confidence, and drop rates.

Example (the tiny ``make run`` checkpoint)::

    RUN=experiments_out/setting2_instruction_tuning/tiny/flan_switch
    FLAN_MOE_DATA_DIR=../shared/data python -m flan_moe.cli.analyze \\
        --checkpoint=$RUN/instruction_tune/model \\
        --suites=mmlu,bbh --examples_per_task=4

Writes ``<output_dir>/routing_analysis.json`` (default output_dir: the MODEL_DIR holding the
checkpoint, beside ``results.json``) and figures under ``<output_dir>/routing_figures/``
(load heatmaps, repeat rates, and training curves when ``<MODEL_DIR>/train/metrics.jsonl``
exists).
``--group_by`` chooses the task label: ``category`` (MMLU group / BBH family; default),
``subtask`` (MMLU subject / BBH task) or ``suite``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flan_moe.cli.analyze",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="MODEL_DIR (latest) or checkpoint_<step>")
    p.add_argument("--suites", default="", help="held-out suites, e.g. mmlu,bbh")
    p.add_argument("--mode", default="direct", choices=("direct", "cot"))
    p.add_argument("--shots", type=int, default=0)
    p.add_argument("--jsonl", default="", help="comma-separated files of {task, inputs, targets}")
    p.add_argument("--group_by", default="category", choices=("category", "subtask", "suite"))
    p.add_argument("--examples_per_task", type=int, default=8, help="per suite subtask; 0 = all")
    p.add_argument("--max_input_length", type=int, default=0, help="default: the checkpoint's")
    p.add_argument("--max_target_length", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--top_tokens", type=int, default=10)
    p.add_argument("--min_count", type=int, default=5)
    p.add_argument("--output_dir", default="")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--no_figures", action="store_true")
    return p


def _suite_examples(args: argparse.Namespace, vocab_spec: str, max_in: int) -> list:
    from flan_moe.analysis.run import Example
    from flan_moe.data.heldout import load_suite

    out = []
    for suite in [s.strip() for s in args.suites.split(",") if s.strip()]:
        by_subtask = load_suite(
            suite,
            mode=args.mode,
            shots=args.shots,
            data_dir=args.data_dir,
            max_input_tokens=max_in,
            vocabulary=vocab_spec,
        )
        for subtask, examples in sorted(by_subtask.items()):
            if args.examples_per_task:
                examples = examples[: args.examples_per_task]
            for ex in examples:
                label = {
                    "suite": suite,
                    "subtask": f"{suite}/{subtask}",
                    "category": f"{suite}/{ex.category or subtask}",
                }[args.group_by]
                out.append(Example(label, ex.inputs, ex.target))
    return out


def _jsonl_examples(files: str) -> list:
    from flan_moe.analysis.run import Example

    out = []
    for name in [f.strip() for f in files.split(",") if f.strip()]:
        for line_no, line in enumerate(Path(name).read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                out.append(Example(str(row["task"]), str(row["inputs"]), str(row["targets"])))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise SystemExit(
                    f"{name}:{line_no}: expected a JSON object with task, inputs and targets "
                    f"({err!r})"
                ) from None
    return out


def run(args: argparse.Namespace) -> Path:
    from flan_moe.analysis import figures
    from flan_moe.analysis.run import AnalysisConfig, analyze
    from flan_moe.data.vocabularies import get_vocabulary
    from flan_moe.training import checkpoints

    if not args.suites and not args.jsonl:
        raise SystemExit("nothing to analyse: pass --suites (e.g. mmlu,bbh) and/or --jsonl FILES")
    directory, step = checkpoints.resolve_checkpoint(args.checkpoint)
    params, config, meta = checkpoints.load_params(args.checkpoint)
    vocab_spec = meta.get("vocabulary", "byte")
    lengths = dict(meta.get("task_feature_lengths") or {})
    max_in = args.max_input_length or int(lengths.get("inputs") or 0)
    if not max_in:
        raise SystemExit(
            f"checkpoint {args.checkpoint} stores no input length; pass --max_input_length"
        )
    examples = _suite_examples(args, vocab_spec, max_in) + _jsonl_examples(args.jsonl)
    cfg = AnalysisConfig(
        max_input_length=max_in,
        max_target_length=args.max_target_length,
        batch_size=args.batch_size,
        top_tokens=args.top_tokens,
        min_count=args.min_count,
    )
    result = analyze(config, params, get_vocabulary(vocab_spec), examples, cfg)
    result.update(
        checkpoint=str(Path(directory) / f"checkpoint_{step}"),
        step=step,
        vocabulary=vocab_spec,
        group_by=args.group_by,
    )
    out_dir = Path(args.output_dir or directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "routing_analysis.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"routing analysis of {len(examples)} examples ({result['truncated']} cut) -> {path}")
    if not args.no_figures:
        drawn = figures.routing_figures(result, out_dir / "routing_figures")
        metrics = Path(directory) / "train" / "metrics.jsonl"
        if metrics.is_file():
            curves = figures.training_curves(
                figures.read_metrics(metrics),
                out_dir / "routing_figures" / "training_curves.png",
                title=f"Training of {config.name} ({metrics})",
            )
            drawn += [curves] if curves else []
        for fig in drawn:
            print(f"figure -> {fig}")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0


if __name__ == "__main__":
    from flan_moe.cli import validation

    validation.run_cli_and_exit(main)
