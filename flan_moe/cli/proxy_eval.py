"""``flan_moe.cli.eval --proxy=base=DIR,expert=DIR,antiexpert=DIR --proxy_alpha=1.0``.

Evaluates proxy-tuning (``flan_moe.merging.proxy``): every suite is generated or ranked
with base + alpha * (expert - antiexpert) logits. Each DIR is a MODEL_DIR (its latest
checkpoint) or one ``checkpoint_<step>``; the three must record one vocabulary. Results
go to ``--output_dir`` under the checkpoint id ``proxy_alpha<alpha>``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from flan_moe.merging.proxy import ROLES


def parse_proxy(spec: str) -> dict[str, str]:
    """'base=A,expert=B,antiexpert=C' -> {role: absolute path}; each role exactly once."""
    parts = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    if sorted(parts) != sorted(ROLES) or len(spec.split(",")) != 3:
        raise SystemExit(f"--proxy={spec!r}: give base=DIR,expert=DIR,antiexpert=DIR")
    return {role: os.path.abspath(parts[role]) for role in ROLES}


def proxy_target(args: argparse.Namespace, target_cls: Any) -> tuple[list[Any], Path]:
    paths = parse_proxy(args.proxy)
    if not args.output_dir:
        raise SystemExit("--proxy needs --output_dir (where results.json is written)")
    return [target_cls(f"proxy_alpha{args.proxy_alpha:g}", paths["base"])], Path(args.output_dir)


def load_proxy(args: argparse.Namespace, mesh: Any, decode: Any) -> tuple[Any, dict[str, Any]]:
    """(the proxy predictor, run info) for ``flan_moe.cli.eval.load_model``."""
    from flan_moe.data.vocabularies import get_vocabulary
    from flan_moe.merging import proxy
    from flan_moe.training import checkpoints

    paths = parse_proxy(args.proxy)
    loaded = [checkpoints.load_params(paths[r]) for r in ROLES]
    vocabs = [meta.get("vocabulary", "byte") for _, _, meta in loaded]
    try:
        proxy.check_vocabularies(vocabs)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    lengths = dict(loaded[0][2].get("task_feature_lengths") or {})
    max_in = args.max_input_length or lengths.get("inputs")
    if not max_in:
        raise SystemExit(f"{paths['base']} stores no task_feature_lengths: pass --max_input_length")
    predictor = proxy.make_predictor(
        [c for _, c, _ in loaded],
        [p for p, _, _ in loaded],
        get_vocabulary(vocabs[0]),
        alpha=args.proxy_alpha,
        max_input_len=int(max_in),
        decode=decode,
        batch_size=args.batch_size,
        max_option_len=args.max_option_length,
        mesh=mesh,
    )
    info = {
        "checkpoint_path": paths["base"],
        "step": None,
        "model": f"proxy({', '.join(c.name for _, c, _ in loaded)})",
        "vocabulary": vocabs[0],
        "max_input_length": int(max_in),
        "proxy": {**paths, "alpha": args.proxy_alpha},
    }
    return predictor, info
