"""Train a small SentencePiece vocabulary on the local FLAN mix (for small models).

    python scripts/train_sentencepiece.py --out vocab/flan_local_8k.model --vocab-size 8000

The model uses T5's special ids (pad 0, eos 1, unk 2, no bos), so its ids work with
``flan_moe.data.vocabularies.SentencePieceVocabulary`` and ``seqio.SentencePieceVocabulary``
alike. Pass the printed path as the vocabulary setting (``VOCABULARY=<path>.model``). Training
text: questions, answers and rationales of every local training record (``flan_mini`` and
``flan_cot`` train splits; never held-out data).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from flan_moe.data import records


def training_text(
    data_dir: str | None = None, max_records_per_dataset: int | None = None
) -> Iterator[str]:
    """Lines of training text from every local training dataset."""
    for collection, names in (
        ("flan_mini", records.MINI_DATASETS),
        ("flan_cot", records.COT_DATASETS),
    ):
        for name in names:
            recs = records.read_records(collection, name, "train", data_dir=data_dir)
            for r in recs[:max_records_per_dataset]:
                for text in (r.context, r.question, r.answer, r.rationale, *r.options):
                    for line in text.splitlines():
                        if line.strip():
                            yield line.strip()


def train(
    out_path: str,
    *,
    vocab_size: int = 8000,
    data_dir: str | None = None,
    max_records_per_dataset: int | None = None,
    character_coverage: float = 1.0,
) -> str:
    """Trains the model and writes ``out_path`` (must end in ``.model``); returns the path."""
    import sentencepiece as spm

    if not out_path.endswith(".model"):
        raise ValueError(f"--out must end in '.model', got {out_path!r}")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_text(data_dir, max_records_per_dataset),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=character_coverage,  # rarer characters: byte fallback
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        byte_fallback=True,
        num_threads=2,
    )
    with open(out_path, "wb") as f:
        f.write(model.getvalue())
    return out_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output path ending in .model")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--data-dir", default=None, help="default: $FLAN_MOE_DATA_DIR")
    parser.add_argument(
        "--character-coverage",
        type=float,
        default=1.0,
        help="share of characters given their own piece (the rest use byte fallback); "
        "lower it (e.g. 0.999) for vocabularies of a few hundred pieces",
    )
    parser.add_argument(
        "--max-records-per-dataset", type=int, default=None, help="default: every record"
    )
    args = parser.parse_args(argv)
    print(
        train(
            args.out,
            vocab_size=args.vocab_size,
            data_dir=args.data_dir,
            max_records_per_dataset=args.max_records_per_dataset,
            character_coverage=args.character_coverage,
        )
    )


if __name__ == "__main__":
    main()
