"""scripts/fetch_data.py: its manifest and layout check against the real data dir (no network)."""

import json

import pytest

from scripts import fetch_data


def test_manifest_covers_every_expected_file():
    dests = {d.dest for d in fetch_data.manifest()}
    expected = set(fetch_data.expected_files())
    # MMLU arrives as one archive unpacked into mmlu/{dev,val,test}.
    non_mmlu = {p for p in expected if not p.startswith("mmlu/")}
    assert non_mmlu <= dests
    assert "mmlu/mmlu.zip" in dests
    assert all(d.url.startswith("https://") for d in fetch_data.manifest())
    assert len(expected) == 27 * 2 + 57 * 3 + 7 + 14 + 2


def test_verify_layout_on_the_real_data(data_dir):
    counts = fetch_data.verify_layout(data_dir)
    assert counts == fetch_data.EXPECTED_COUNTS


def test_verify_layout_reports_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="fetch_data.py"):
        fetch_data.verify_layout(tmp_path)


def test_checksum_manifest_round_trip(data_dir, tmp_path, monkeypatch):
    subset = ["flan_mini/heldout/svamp.jsonl", "bbh/bbh/navigate.json"]
    monkeypatch.setattr(fetch_data, "expected_files", lambda *a: subset)
    manifest = tmp_path / "sums.json"
    manifest.write_text(json.dumps(fetch_data.checksums(data_dir)))
    fetch_data.verify_checksums(data_dir, manifest)
    bad = {subset[0]: "0" * 64}
    manifest.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_data.verify_checksums(data_dir, manifest)


def test_mmlu_archive_is_unpacked_into_splits(tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mmlu/dev/anatomy_dev.csv", "q,a,b,c,d,A\n")
        z.writestr("mmlu/test/anatomy_test.csv", "q,a,b,c,d,B\n")
        z.writestr("mmlu/README.txt", "ignored")
    fetch_data._unzip_mmlu(buf.getvalue(), tmp_path / "mmlu")
    assert (tmp_path / "mmlu/dev/anatomy_dev.csv").read_text() == "q,a,b,c,d,A\n"
    assert (tmp_path / "mmlu/test/anatomy_test.csv").exists()
    assert not (tmp_path / "mmlu/README.txt").exists()
