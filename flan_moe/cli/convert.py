"""Convert a checkpoint: any supported source -> our orbax MODEL_DIR, or -> a HF folder.

    python -m flan_moe.cli.convert --source=/path/to/hf-or-t5x-or-model_dir --output=DIR \
        [--model=<size>] [--vocabulary=byte|/path/spiece.model] [--to=orbax|hf]

Sources (``flan_moe.interop.start.detect_format``): our MODEL_DIR or ``checkpoint_<step>/``
(orbax), a Hugging Face folder (config.json + safetensors / pytorch_model*.bin; T5 1.0,
T5 v1.1, Flan-T5, Switch), a T5X ``checkpoint_<step>/`` directory (needs ``--model``, a
size in ``flan_moe.model.config.SIZES``: T5X stores no config).

``--to=orbax`` (default) writes ``DIR/checkpoint_0`` (params, model config, vocabulary,
where it came from): use DIR as ``INITIAL_CHECKPOINT_PATH``. ``--to=hf`` writes
config.json + model.safetensors (+ spiece.model for a SentencePiece vocabulary) that
transformers loads (``--allow_routing_differences`` to export an MoE whose routing HF
cannot express). Converted models compute in float32.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import jax

log = logging.getLogger("flan_moe.convert")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m flan_moe.cli.convert", description=__doc__)
    p.add_argument("--source", required=True, help="orbax MODEL_DIR, HF folder or T5X checkpoint")
    p.add_argument("--output", required=True, help="directory to write")
    p.add_argument("--to", choices=("orbax", "hf"), default="orbax")
    p.add_argument("--model", default=None, help="size name (required for T5X sources)")
    p.add_argument("--vocabulary", default=None, help="'byte' or a SentencePiece .model path")
    p.add_argument("--allow_routing_differences", action="store_true")
    return p


def _read(args: argparse.Namespace):
    from flan_moe.interop.start import UNRECORDED, read_start
    from flan_moe.model.config import get_config

    model_config = get_config(args.model, dtype="float32") if args.model else None
    params, config, start = read_start(args.source, model_config)
    vocabulary = args.vocabulary or (start.vocabulary if start.vocabulary != UNRECORDED else None)
    if vocabulary is None:
        raise SystemExit(
            f"{args.source} records no vocabulary: pass --vocabulary=byte or "
            "--vocabulary=/path/to/sentencepiece.model (T5's: gs://t5-data/vocabs/"
            "cc_all.32000.100extra/sentencepiece.model)"
        )
    return params, config, start, vocabulary


def _write_orbax(params, config, start, vocabulary: str, output: str) -> str:
    """``output/checkpoint_0``: the params (fresh optimizer state), model config,
    vocabulary record, and ``output/initial_checkpoint.json`` naming the source."""
    from flan_moe import partitioning
    from flan_moe.interop.start import vocabulary_fingerprint, write_start_record
    from flan_moe.training.checkpoints import Checkpointer
    from flan_moe.training.optimizers import OptimizerConfig
    from flan_moe.training.trainer import Trainer

    mesh = partitioning.make_mesh(data=1, devices=jax.devices()[:1])
    trainer = Trainer(model_config=config, optimizer_config=OptimizerConfig(), mesh=mesh)
    state = trainer.init_from_params(params, 0)
    write_start_record(output, start)
    checkpointer = Checkpointer(output)
    try:
        return checkpointer.save(
            state,
            data_position=0,
            metadata={
                "vocabulary": vocabulary,
                "vocabulary_fingerprint": vocabulary_fingerprint(vocabulary),
                "model_config": config.to_dict(),
                "initial_checkpoint": start.to_dict(),
            },
        )
    finally:
        checkpointer.close()


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    params, config, start, vocabulary = _read(args)
    if args.to == "hf":
        from flan_moe.interop.hf_export import export_hf

        spm = vocabulary if vocabulary.endswith(".model") else None
        if spm is None:
            log.info("vocabulary %r is not SentencePiece: no spiece.model written", vocabulary)
        out = export_hf(
            params,
            config,
            args.output,
            sentencepiece_model=spm,
            allow_routing_differences=args.allow_routing_differences,
        )
    else:
        out = _write_orbax(params, config, start, vocabulary, args.output)
    log.info("wrote %s", out)
    print(out)
    return out


if __name__ == "__main__":
    main()
