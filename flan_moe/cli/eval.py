"""Evaluate checkpoints on the held-out suites: ``python -m flan_moe.cli.eval ...``.

Examples::

    # every checkpoint of a run (a sweep), MMLU + BBH, direct, few-shot, 2 examples per subtask
    FLAN_MOE_DATA_DIR=../shared/data python -m flan_moe.cli.eval \\
        --checkpoint_dir=/tmp/x --suites=mmlu,bbh --mode=direct --shots=5 --subsample=2

    # the latest checkpoint only, chain-of-thought, zero- and few-shot, beam search
    python -m flan_moe.cli.eval --checkpoint_dir=/tmp/x --latest_only --suites=bbh \\
        --mode=cot --shots=0,3 --decode=beam --beam_size=4

    # rank classification over the answer options (direct mode), length-normalised
    python -m flan_moe.cli.eval --checkpoint_dir=/tmp/x/checkpoint_2000 --suites=mmlu \\
        --method=score --length_normalized

    # model-free baselines through the same path (no checkpoint needed)
    python -m flan_moe.cli.eval --baseline=random --output_dir=/tmp/baselines --suites=mmlu,bbh

    # the paper's protocols (MMLU direct ranked over A-D, everything else generated and
    # exact-matched), MMLU test split, on a Hugging Face T5 / Flan-T5 / Switch folder
    python -m flan_moe.cli.eval --hf_model_dir=/models/flan-t5-small --output_dir=/tmp/ft5 \\
        --suites=mmlu,bbh --mode=direct,cot --shots=5 --method=paper --split=test

``--checkpoint_dir`` is a MODEL_DIR (every complete ``checkpoint_<step>``; ``--latest_only``
or ``--steps`` narrow it) or one checkpoint directory. Results go to
``<output_dir>/results.json`` (default output_dir: the MODEL_DIR holding the checkpoints), one
entry per (checkpoint, suite, mode, shots, method, subsample, split); per-example predictions
go to ``<output_dir>/predictions/<checkpoint>/<suite>[.<split>].<mode>.<shots>shot.<method>
[.sub<k>].jsonl`` (the split is MMLU's val/test: val and test results never overwrite each
other). ``--method=paper`` follows the Flan protocols per suite: MMLU direct by rank
classification over the letters A-D (hendrycks / lm-eval), everything else by generation and
exact match (BBH's authors and Flan); rank classification is shown as "ranked".
Generation stops at EOS and at the few-shot separator (`decoding.STOP_SEQUENCES`); the decode
cap defaults per suite and mode to 1.25x the longest reference answer in the checkpoint's
vocabulary (`evaluator.default_max_decode_len`), and outputs that hit it are counted
(``metadata.decode_cap``, column at_cap). A sweep's scores also go to TensorBoard
(``<output_dir>/eval``, one point per checkpoint step) beside the training curves.
An entry already in results.json is skipped (and its checkpoint not even loaded) unless
``--force``. ``--shots`` above a suite's exemplar count uses that count (BBH has 3), said on
the console and recorded as the entry's shots. Prompts are fitted to the checkpoint's input
length (``task_feature_lengths["inputs"]``, or ``--max_input_length``): exemplars are dropped
first, then the prompt is cut from the left; both counts are printed and stored in the
entry's ``metadata.truncation``. The table printed at the end has one row per entry.

Parallelism: ``--data_parallel`` / ``--expert_parallel`` / ``--model_parallel`` set the mesh
(one may be -1 = the remaining devices; default: all devices data-parallel).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flan_moe import decoding
from flan_moe.cli import validation
from flan_moe.evaluation import results

SUITES = ("mmlu", "bbh", "gsm8k", "svamp")


@dataclasses.dataclass(frozen=True)
class Target:
    """One thing to evaluate: a checkpoint (id + path) or a baseline (path None)."""

    checkpoint: str
    path: str | None
    step: int | None = None


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flan_moe.cli.eval",
        description="Evaluate checkpoints (or a model-free baseline) on MMLU/BBH/GSM8K/SVAMP.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    where = p.add_argument_group("what to evaluate")
    where.add_argument("--checkpoint_dir", help="a MODEL_DIR (sweep) or one checkpoint_<step> dir")
    where.add_argument("--latest_only", action="store_true", help="only the latest checkpoint")
    where.add_argument("--steps", default="", help="only these steps, e.g. 1000,2000")
    where.add_argument(
        "--baseline", choices=("constant", "random"), help="a model-free predictor instead"
    )
    where.add_argument(
        "--hf_model_dir",
        help="a Hugging Face T5 / Flan-T5 / Switch folder (config.json, weights, spiece.model)",
    )
    what = p.add_argument_group("suites")
    what.add_argument("--suites", default="mmlu,bbh", help=f"comma list of {SUITES}")
    what.add_argument("--mode", default="direct", help="direct, cot, or both: direct,cot")
    what.add_argument("--shots", default="0", help="exemplars per prompt, e.g. 0 or 5 or 0,5")
    what.add_argument("--split", default="val", choices=("val", "test"), help="MMLU split")
    what.add_argument("--subsample", type=int, default=None, help="first N examples per subtask")
    what.add_argument("--data_dir", default=None, help="default: $FLAN_MOE_DATA_DIR")
    how = p.add_argument_group("method")
    how.add_argument(
        "--method",
        default="generate",
        choices=("generate", "score", "paper"),
        help="paper: MMLU direct ranked over A-D, the rest generated (the Flan protocols)",
    )
    how.add_argument(
        "--length_normalized", action="store_true", help="score: rank by per-token average"
    )
    how.add_argument("--decode", default="greedy", choices=("greedy", "sample", "beam"))
    how.add_argument("--beam_size", type=int, default=4)
    how.add_argument("--alpha", type=float, default=0.6, help="beam length-penalty exponent")
    how.add_argument("--temperature", type=float, default=1.0)
    how.add_argument("--top_k", type=int, default=0)
    how.add_argument("--seed", type=int, default=0)
    how.add_argument(
        "--max_input_length", type=int, default=None, help="default: the checkpoint's inputs"
    )
    how.add_argument(
        "--max_decode_length",
        type=int,
        default=None,
        help="default: per suite and mode, 1.25x the longest reference answer",
    )
    how.add_argument("--max_option_length", type=int, default=64, help="score: option tokens")
    how.add_argument("--batch_size", type=int, default=16)
    how.add_argument("--proxy", default=None, help="base=DIR,expert=DIR,antiexpert=DIR: "
                     "proxy-tuned decoding and ranking (flan_moe.cli.proxy_eval)")  # fmt: skip
    how.add_argument("--proxy_alpha", type=float, default=1.0, help="proxy: expert weight")
    how.add_argument("--weights", default="raw", help="raw (trained params), ema / swa (kept in "
                     "optimizer state) or lawa_<k> (mean of the last k checkpoints)")  # fmt: skip
    run = p.add_argument_group("run")
    run.add_argument("--output_dir", default=None, help="default: the MODEL_DIR")
    run.add_argument("--force", action="store_true", help="re-evaluate existing entries")
    run.add_argument("--data_parallel", type=int, default=-1)
    run.add_argument("--expert_parallel", type=int, default=1)
    run.add_argument("--model_parallel", type=int, default=1)
    run.add_argument("--no_progress", action="store_true")
    return p


# ------------------------------------------------------------------------------- planning


def find_targets(args: argparse.Namespace) -> tuple[list[Target], Path]:
    """(checkpoints or the baseline to evaluate, the output directory)."""
    if args.proxy:
        from flan_moe.cli.proxy_eval import proxy_target

        return proxy_target(args, Target)
    if args.baseline:
        out = args.output_dir or args.checkpoint_dir
        if not out:
            raise SystemExit("--baseline needs --output_dir (where results.json is written)")
        return [Target("baseline", None)], Path(out)
    if args.hf_model_dir:
        if args.checkpoint_dir:
            raise SystemExit("give either --checkpoint_dir or --hf_model_dir, not both")
        if not args.output_dir:
            raise SystemExit("--hf_model_dir needs --output_dir (where results.json is written)")
        path = os.path.abspath(args.hf_model_dir)
        return [Target(f"hf_{os.path.basename(path.rstrip('/'))}", path)], Path(args.output_dir)
    if not args.checkpoint_dir:
        raise SystemExit(
            "give --checkpoint_dir (a MODEL_DIR or a checkpoint), --hf_model_dir or --baseline"
        )
    from flan_moe.training import checkpoints

    path = os.path.abspath(args.checkpoint_dir)
    name = os.path.basename(path.rstrip("/"))
    prefix = f"{checkpoints.STEP_PREFIX}_"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        model_dir, step = checkpoints.resolve_checkpoint(path)
        found = [(step, path)]
    else:
        found = checkpoints.list_checkpoints(path)
        if args.latest_only:  # the latest GOOD one: a damaged newer one is named and skipped
            latest = checkpoints.latest_checkpoint(path, level="sizes")
            found = [latest] if latest else []
        model_dir = path
        if not found:
            raise SystemExit(
                f"no complete checkpoint under {path}: expected {prefix}<step>/ directories "
                "(train with `python -m flan_moe.cli.train`), or pass one checkpoint directory"
            )
    if args.steps:
        wanted = {int(s) for s in _csv(args.steps)}
        missing = sorted(wanted - {step for step, _ in found})
        if missing:
            have = [step for step, _ in found]
            raise SystemExit(f"steps {missing} not found in {model_dir}; available: {have}")
        found = [(s, p) for s, p in found if s in wanted]
    if args.latest_only:
        found = found[-1:]
    suffix = "" if args.weights == "raw" else f"_{args.weights}"  # its own results entries
    targets = [Target(f"{prefix}{step}{suffix}", p, step) for step, p in found]
    return targets, Path(args.output_dir or model_dir)


def suite_method(args: argparse.Namespace, suite: str, mode: str) -> str:
    """ "generate" or "score" for one suite and mode (``--method=paper``: MMLU direct is ranked
    over A-D as hendrycks/lm-eval do; BBH, GSM8K, SVAMP and CoT are generated)."""
    if args.method != "paper":
        return args.method
    return "score" if (suite, mode) == ("mmlu", "direct") else "generate"


def method_key(args: argparse.Namespace, suite: str = "mmlu", mode: str = "direct") -> str:
    """The results-entry method for these flags (`evaluator.entry_method`)."""
    from flan_moe.evaluation.evaluator import entry_method

    return entry_method(
        suite_method(args, suite, mode),
        length_normalized=args.length_normalized,
        decode=decode_config(args, max_decode_len=1),
        baseline=args.baseline,
    )


def decode_config(args: argparse.Namespace, *, max_decode_len: int) -> decoding.DecodeConfig:
    return decoding.DecodeConfig(
        strategy=args.decode,
        max_decode_len=max_decode_len,
        temperature=args.temperature,
        top_k=args.top_k,
        beam_size=args.beam_size,
        alpha=args.alpha,
        seed=args.seed,
    )


def plan(args: argparse.Namespace) -> list[tuple[str, str, int, int]]:
    """(suite, mode, requested shots, used shots) combinations, shots capped per suite."""
    from flan_moe.data.heldout import MAX_SHOTS

    suites, modes = _csv(args.suites), _csv(args.mode)
    shots = [int(s) for s in _csv(args.shots)]
    for suite in suites:
        if suite not in SUITES:
            raise SystemExit(f"unknown suite {suite!r}; choose from {', '.join(SUITES)}")
    for mode in modes:
        if mode not in ("direct", "cot"):
            raise SystemExit(f"unknown mode {mode!r}; use direct, cot or direct,cot")
    if args.method == "score" and "cot" in modes:  # "paper" generates CoT
        raise SystemExit("--method=score needs --mode=direct (CoT answers must be generated)")
    combos = []
    for suite in suites:
        for mode in modes:
            for k in shots:
                if k < 0:
                    raise SystemExit(f"--shots must be >= 0, got {k}")
                used = min(k, MAX_SHOTS[suite])
                if (suite, mode, used) not in {(s, m, u) for s, m, _, u in combos}:
                    combos.append((suite, mode, k, used))
    return combos


def predictions_path(out_dir: Path, checkpoint: str, key: results.EntryKey) -> Path:
    sub = "" if key.subsample is None else f".sub{key.subsample}"
    split = "" if key.split is None else f".{key.split}"
    name = f"{key.suite}{split}.{key.mode}.{key.shots}shot.{key.method}{sub}.jsonl"
    return out_dir / "predictions" / checkpoint / name


# ------------------------------------------------------------------------------ predictors


def _mesh(args: argparse.Namespace):
    import jax

    from flan_moe import partitioning

    if jax.device_count() == 1:
        return None
    return partitioning.make_mesh(
        data=args.data_parallel, expert=args.expert_parallel, model=args.model_parallel
    )


def _read_model(args: argparse.Namespace, target: Target) -> tuple[Any, Any, str, dict]:
    """(params, config, vocabulary spec, task_feature_lengths) of a checkpoint or HF folder."""
    if args.hf_model_dir:
        return _read_hf_folder(target.path)
    from flan_moe.training import checkpoints

    if args.weights != "raw":
        from flan_moe.merging.averaging import load_weights

        params, config, meta = load_weights(target.path, args.weights)
    else:
        params, config, meta = checkpoints.load_params(target.path)
    return (
        params,
        config,
        meta.get("vocabulary", "byte"),
        dict(meta.get("task_feature_lengths") or {}),
    )


def _read_hf_folder(path: str) -> tuple[Any, Any, str, dict]:
    """A Hugging Face T5 / Flan-T5 / Switch folder through the converters, in float32, with the
    folder's SentencePiece vocabulary (``spiece.model``)."""
    import json

    from flan_moe.interop.hf_switch import load_hf_switch
    from flan_moe.interop.hf_t5 import load_hf_t5

    config_file, vocab_file = Path(path) / "config.json", Path(path) / "spiece.model"
    for needed in (config_file, vocab_file):
        if not needed.is_file():
            raise SystemExit(
                f"--hf_model_dir {path} has no {needed.name}: pass a folder written by "
                "save_pretrained of a T5 / Flan-T5 / Switch model together with its tokenizer"
            )
    model_type = json.loads(config_file.read_text()).get("model_type", "t5")
    load = load_hf_switch if model_type == "switch_transformers" else load_hf_t5
    params, config = load(path, dtype="float32")
    return params, config, str(vocab_file), {}


def load_model(args: argparse.Namespace, target: Target) -> tuple[Any, dict[str, Any]]:
    """(a ModelPredictor for the checkpoint or HF folder, run info for the entries' metadata).

    Decode settings are set per suite and mode later (`_set_decode`)."""
    from flan_moe.data.vocabularies import get_vocabulary
    from flan_moe.evaluation.evaluator import ModelPredictor

    if args.proxy:
        from flan_moe.cli.proxy_eval import load_proxy

        return load_proxy(args, _mesh(args), decode_config(args, max_decode_len=1))
    params, config, vocab_spec, lengths = _read_model(args, target)
    max_in = args.max_input_length or lengths.get("inputs") or (512 if args.hf_model_dir else None)
    if not max_in:
        raise SystemExit(
            f"checkpoint {target.path} stores no task_feature_lengths {lengths}; pass "
            "--max_input_length"
        )
    predictor = ModelPredictor(
        config,
        params,
        get_vocabulary(vocab_spec),
        max_input_len=int(max_in),
        decode=decode_config(args, max_decode_len=args.max_decode_length or 1),
        batch_size=args.batch_size,
        max_option_len=args.max_option_length,
        mesh=_mesh(args),
    )
    info = {
        "checkpoint_path": target.path,
        "step": target.step,
        "model": config.name,
        "vocabulary": vocab_spec,
        "max_input_length": int(max_in),
    }
    return predictor, info


def _set_decode(
    args: argparse.Namespace, predictor: Any, key: results.EntryKey, info: dict
) -> None:
    """Per suite and mode: the decode cap (``--max_decode_length`` or the suite default) and
    the stop sequences; recorded in ``info`` for the entry's metadata."""
    from flan_moe.evaluation.evaluator import default_max_decode_len

    length = args.max_decode_length or default_max_decode_len(
        results.suite_family(key.suite), key.mode, info["vocabulary"], args.data_dir
    )
    predictor.set_decode(
        decode_config(args, max_decode_len=int(length)), decoding.STOP_SEQUENCES[key.mode]
    )
    info["max_decode_length"] = int(length)


def load_baseline(args: argparse.Namespace, suite: str) -> Any:
    from flan_moe.evaluation import baselines
    from flan_moe.evaluation.evaluator import BaselinePredictor

    answers = baselines.exemplar_answers(suite, data_dir=args.data_dir)
    if args.baseline == "constant":
        return BaselinePredictor(baselines.ConstantPredictor.from_exemplar_answers(answers))
    return BaselinePredictor(baselines.RandomPredictor(seed=args.seed, answer_pool=answers))


# ------------------------------------------------------------------------------------ main


def entry_keys(
    args: argparse.Namespace, target: Target, combos: Sequence[tuple[str, str, int, int]]
) -> list[results.EntryKey]:
    """The results.json keys of one target: split (MMLU only) and subsample included."""
    return [
        results.EntryKey(
            target.checkpoint,
            suite,
            mode,
            used,
            method_key(args, suite, mode),
            args.subsample,
            args.split if results.suite_family(suite) == "mmlu" else None,
        )
        for suite, mode, _, used in combos
    ]


def run(args: argparse.Namespace) -> list[results.EvalEntry]:
    """Evaluates every missing (target, suite, mode, shots) and returns the entries touched."""
    if args.subsample is not None and args.subsample <= 0:
        raise SystemExit(f"--subsample must be a positive count per subtask, got {args.subsample}")
    targets, out_dir = find_targets(args)
    combos = plan(args)
    for suite, _, asked, used in combos:
        if asked != used:
            print(f"note: {suite} has {used} exemplars; --shots={asked} runs {used}-shot")
    touched: list[results.EvalEntry] = []
    for target in targets:
        touched += _evaluate_target(args, target, entry_keys(args, target, combos), out_dir)
    return touched


def _evaluate_target(
    args: argparse.Namespace, target: Target, keys: list[results.EntryKey], out_dir: Path
) -> list[results.EvalEntry]:
    """Skips the keys results.json holds, evaluates the rest; new scores go to TensorBoard."""
    results_file = out_dir / "results.json"
    existing = results.read_results(results_file)
    todo = [k for k in keys if args.force or not results.has_entry(existing, k)]
    touched = []
    for key in keys:
        if key not in todo:
            split = f" {key.split}" if key.split else ""
            print(f"skip {key.checkpoint} {key.suite}{split} {key.mode} {key.shots}-shot "
                  f"{key.method}: already in {results_file} (--force to redo)")  # fmt: skip
            touched.append(results.find_entry(existing, key))
    if not todo:
        return touched
    predictor, info = load_model(args, target) if target.path else (None, {})
    new = [_evaluate_key(args, predictor, dict(info), key, out_dir) for key in todo]
    if target.step is not None:
        write_tensorboard(out_dir, target.step, new)
    return touched + new


def _evaluate_key(
    args: argparse.Namespace, predictor: Any, info: dict, key: results.EntryKey, out_dir: Path
) -> results.EvalEntry:
    from flan_moe.evaluation import evaluator

    if predictor is None:
        predictor = load_baseline(args, key.suite)
    else:
        _set_decode(args, predictor, key, info)
    outcome = evaluator.evaluate(
        predictor,
        suite=key.suite,
        mode=key.mode,
        shots=key.shots,
        method=suite_method(args, key.suite, key.mode),
        length_normalized=args.length_normalized,
        split=args.split,
        subsample=args.subsample,
        checkpoint=key.checkpoint,
        data_dir=args.data_dir,
        max_input_tokens=info.get("max_input_length"),
        vocabulary=info.get("vocabulary", "byte"),
        show_progress=not args.no_progress,
        metadata=info,
    )
    if outcome.entry.key != key:  # pragma: no cover - a naming bug, not a user error
        raise RuntimeError(f"entry key {outcome.entry.key} != planned key {key}")
    pred_file = predictions_path(out_dir, key.checkpoint, key)
    results.write_predictions_jsonl(pred_file, outcome.records)
    entry = dataclasses.replace(outcome.entry, predictions_file=os.path.relpath(pred_file, out_dir))
    results_file = out_dir / "results.json"
    results.update_results(results_file, [entry])
    _print_done(entry, results_file)
    return entry


def _print_done(entry: results.EvalEntry, results_file: Path) -> None:
    key, s, meta = entry.key, entry.summary, entry.metadata
    trunc = meta.get("truncation", {})
    eff = (meta.get("effective_shots") or {}).get("mean")
    cap = meta.get("decode_cap") or {}
    print(
        f"done {key.checkpoint} {key.suite}{' ' + key.split if key.split else ''} {key.mode} "
        f"{key.shots}-shot {results.method_label(key.method)}: {s['num_examples']} examples, "
        f"micro {_pct(s['micro_avg'])} macro {_pct(s['macro_avg'])}; effective shots "
        f"{'-' if eff is None else f'{eff:.2f}'}; prompts with exemplars dropped "
        f"{trunc.get('prompts_with_exemplars_dropped', 0)}, cut from the left "
        f"{trunc.get('prompts_truncated_left', 0)} (input length "
        f"{trunc.get('max_input_tokens')}); outputs at the decode cap "
        f"{cap.get('hit', '-')} -> {results_file}"
    )


def write_tensorboard(out_dir: Path, step: int, entries: Sequence[results.EvalEntry]) -> None:
    """Scores of one checkpoint step to ``<out_dir>/eval`` (TensorBoard + metrics.jsonl): tags
    ``<suite>[_<split>]/<mode>_<k>shot_<method>/<macro|micro|bbh23>``, in percent."""
    from flan_moe.training.summaries import SummaryWriter

    scalars = {}
    for entry in entries:
        s = entry.summary
        split = f"_{entry.split}" if entry.split else ""
        sub = "" if entry.subsample is None else f"_sub{entry.subsample}"
        tag = f"{entry.suite}{split}/{entry.mode}_{entry.shots}shot_{entry.method}{sub}"
        for name, value in (("macro", s["macro_avg"]), ("micro", s["micro_avg"]),
                            ("bbh23", s.get("macro_avg_tasks"))):  # fmt: skip
            if value is not None:
                scalars[f"{tag}/{name}"] = 100.0 * value
    if scalars:
        writer = SummaryWriter(str(out_dir), subdir="eval")
        try:
            writer.write(step, scalars)
        finally:
            writer.close()


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    validation.check_eval_args(args, SUITES)
    entries = run(args)
    if entries:
        print()
        print(results.format_table(entries))
    return 0


if __name__ == "__main__":
    from flan_moe.cli.fast_exit import exit_now

    exit_now(validation.run_cli(main))
