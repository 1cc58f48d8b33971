"""Pure-Python vocabularies (no TensorFlow / SeqIO): byte-level and SentencePiece.

The ids match SeqIO's vocabularies exactly (tests compare against them), so a model trained
through the SeqIO tasks can be decoded and scored on a machine without TensorFlow:

- ``ByteVocabulary``: 0 = pad, 1 = eos, 2 = unk, UTF-8 byte ``b`` -> id ``b + 3``;
  ``vocab_size`` = 259 (same as ``seqio.ByteVocabulary()``).
- ``SentencePieceVocabulary(path)``: the model's own ids (``seqio.SentencePieceVocabulary(path)``
  with no extra ids); project models are trained with pad=0, eos=1, unk=2 by
  ``scripts/train_sentencepiece.py``.

``get_vocabulary(spec)`` turns the vocabulary *spec string* stored in a checkpoint config into a
vocabulary: ``"byte"`` (the default) or a path to a ``.model`` file.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Protocol

BYTE_SPEC = "byte"
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2


class Vocabulary(Protocol):
    """What the evaluator and the data pipeline need from a vocabulary."""

    spec: str

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


def _cut_at_eos(ids: Iterable[int], eos_id: int) -> list[int]:
    """Ids up to (excluding) the first EOS, as plain ints."""
    out: list[int] = []
    for i in ids:
        i = int(i)
        if i == eos_id:
            break
        out.append(i)
    return out


class _T5SpecialIds:
    """Pad 0 and EOS 1 (T5's convention), the same in every vocabulary here."""

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID


class ByteVocabulary(_T5SpecialIds):
    """UTF-8 bytes shifted by the 3 special ids (pad 0, eos 1, unk 2); no extra ids."""

    spec = BYTE_SPEC
    _NUM_SPECIAL = 3

    @property
    def vocab_size(self) -> int:
        return 256 + self._NUM_SPECIAL

    @property
    def unk_id(self) -> int:
        return UNK_ID

    def encode(self, text: str) -> list[int]:
        return [b + self._NUM_SPECIAL for b in text.encode("utf-8")]

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes up to the first EOS; special and out-of-range ids are skipped."""
        raw = bytes(
            i - self._NUM_SPECIAL
            for i in _cut_at_eos(ids, EOS_ID)
            if self._NUM_SPECIAL <= i < self.vocab_size
        )
        return raw.decode("utf-8", errors="ignore")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ByteVocabulary)

    def __hash__(self) -> int:
        return hash(BYTE_SPEC)

    def __repr__(self) -> str:
        return "ByteVocabulary()"


class SentencePieceVocabulary(_T5SpecialIds):
    """A SentencePiece model file, via the ``sentencepiece`` package (loaded lazily)."""

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"SentencePiece model {path!r} does not exist. Pass 'byte' for the byte "
                "vocabulary, download T5's model (gs://t5-data/vocabs/cc_all.32000/"
                "sentencepiece.model), or train one with `python scripts/train_sentencepiece.py`."
            )
        self.spec = path

    @functools.cached_property
    def _processor(self):  # sentencepiece.SentencePieceProcessor
        import sentencepiece

        proc = sentencepiece.SentencePieceProcessor()
        proc.Load(self.spec)
        if proc.pad_id() != PAD_ID or proc.eos_id() != EOS_ID:
            raise ValueError(
                f"SentencePiece model {self.spec!r} has pad_id={proc.pad_id()} and "
                f"eos_id={proc.eos_id()}; the models here need pad_id=0 and eos_id=1 (T5's "
                "convention). Train it with `python scripts/train_sentencepiece.py`."
            )
        return proc

    @property
    def vocab_size(self) -> int:
        return int(self._processor.GetPieceSize())

    @property
    def unk_id(self) -> int:
        return int(self._processor.unk_id())

    def encode(self, text: str) -> list[int]:
        return list(self._processor.EncodeAsIds(text))

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes up to the first EOS; ids beyond the vocabulary become unk (as SeqIO does)."""
        size = self.vocab_size
        clean = [i if i < size else self.unk_id for i in _cut_at_eos(ids, EOS_ID)]
        return self._processor.DecodeIds(clean)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SentencePieceVocabulary) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __repr__(self) -> str:
        return f"SentencePieceVocabulary({self.spec!r})"


@functools.lru_cache(maxsize=8)
def get_vocabulary(spec: str = BYTE_SPEC) -> ByteVocabulary | SentencePieceVocabulary:
    """Vocabulary from its spec string: ``"byte"`` or a path to a SentencePiece ``.model`` file."""
    if spec == BYTE_SPEC:
        return ByteVocabulary()
    if spec.endswith(".model"):
        return SentencePieceVocabulary(spec)
    raise ValueError(
        f"Unknown vocabulary spec {spec!r}: use 'byte' or a path to a SentencePiece '.model' file."
    )


def decode_batch(vocab: Vocabulary, rows: Sequence[Iterable[int]]) -> list[str]:
    """Decodes each row (e.g. a [B, L] array) up to its first EOS."""
    return [vocab.decode(r) for r in rows]
