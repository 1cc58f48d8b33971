"""Pure-Python vocabularies against SeqIO's on identical inputs / model files."""

import subprocess
import sys
from pathlib import Path

import pytest

from flan_moe.data.vocabularies import ByteVocabulary, SentencePieceVocabulary, get_vocabulary

TEXTS = [
    "Hello world.",
    "Ünïcødé ✓ — 日本語",
    "",
    "  spaces\tand\nnewlines  ",
    "So the answer is (B).",
]


def test_pure_python_modules_do_not_import_tensorflow():
    code = (
        "import sys\n"
        "import flan_moe.data.vocabularies, flan_moe.data.heldout, flan_moe.data.templates\n"
        "import flan_moe.data.records, flan_moe.data.paths\n"
        "bad = [m for m in ('tensorflow', 'seqio', 'gin') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2]
    )


def test_byte_vocabulary_matches_seqio():
    import seqio

    ref, ours = seqio.ByteVocabulary(), ByteVocabulary()
    assert ours.vocab_size == ref.vocab_size == 259
    assert (ours.pad_id, ours.eos_id) == (ref.pad_id, ref.eos_id) == (0, 1)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == list(ref.encode(text))
        assert ours.decode(ids) == ref.decode(ids) == text
    # EOS cuts decoding; out-of-range and special ids are skipped, as in SeqIO.
    ids = [*ours.encode("ab"), 2, 400, 1, *ours.encode("cd")]
    assert ours.decode(ids) == ref.decode(ids) == "ab"


def test_byte_ids_hand_checked():
    assert ByteVocabulary().encode("A\n") == [65 + 3, 10 + 3]


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory, data_dir):
    from scripts import train_sentencepiece

    out = tmp_path_factory.mktemp("spm") / "tiny.model"
    return train_sentencepiece.train(str(out), vocab_size=400, max_records_per_dataset=60)


def test_sentencepiece_matches_seqio_on_project_trained_model(spm_path):
    import seqio

    ref, ours = seqio.SentencePieceVocabulary(spm_path), SentencePieceVocabulary(spm_path)
    assert ours.vocab_size == ref.vocab_size == 400
    assert (ours.pad_id, ours.eos_id, ours.unk_id) == (0, 1, ref.unk_id)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == list(ref.encode(text))
        assert ours.decode(ids) == ref.decode(ids)
    ids = [*ours.encode("the answer"), 1, *ours.encode("ignored")]
    assert ours.decode(ids) == ref.decode(ids) == "the answer"
    assert get_vocabulary(spm_path) == ours


def test_get_vocabulary_specs_and_errors(tmp_path):
    assert isinstance(get_vocabulary(), ByteVocabulary)
    assert get_vocabulary("byte") == ByteVocabulary()
    with pytest.raises(ValueError, match="'byte' or a path"):
        get_vocabulary("t5")
    with pytest.raises(FileNotFoundError, match="train_sentencepiece"):
        get_vocabulary(str(tmp_path / "missing.model"))
