"""Local FLAN readers on the real files, and the data-dir error."""

import pytest

from flan_moe.data import paths, records


def test_every_local_dataset_parses(data_dir):
    total = 0
    for collection, names in (
        ("flan_mini", records.MINI_DATASETS),
        ("flan_cot", records.COT_DATASETS),
    ):
        for name in names:
            train = records.read_records(collection, name, "train")
            val = records.read_records(collection, name, "validation")
            assert train and all(r.question and r.answer for r in train), name
            assert not {r.example_id for r in train} & {r.example_id for r in val}
            for r in train:
                if r.options:
                    assert r.answer in r.options, (name, r)
            total += len(train) + len(val)
    # MathQA has 22 rows whose gold option text is empty in the source: skipped and counted.
    assert records.skipped_records("flan_mini", "math_qa") == 22
    assert total + 22 == 22316 + 33443
    # ~2% validation, by stable hash.
    val = sum(len(records.read_records("flan_cot", n, "validation")) for n in records.COT_DATASETS)
    assert 0.01 < val / 33443 < 0.03


def test_hand_checked_records(data_dir):
    csqa = records._read_all("flan_mini", "commonsense_qa", str(data_dir))[0]
    assert csqa.question == (
        "A revolving door is convenient for two direction travel, but it also serves as a "
        "security measure at a what?"
    )
    assert csqa.options == ("bank", "department store", "mall", "new york")
    assert csqa.answer == "bank"
    boolq = records._read_all("flan_mini", "boolq", str(data_dir))[1]
    assert boolq.question == "Is house tax and property tax are same?"
    assert boolq.options == ("no", "yes") and boolq.context.startswith("Property tax")
    aqua = records._read_all("flan_cot", "aqua", str(data_dir))[0]
    assert aqua.question.endswith("Options:\n(A) 300\n(B) 992\n(C) 1120\n(D) 552\n(E) 312")
    assert aqua.answer == "(C)" and aqua.rationale.startswith("1/7:1/7:1/14 = 2:2:1\n")
    wsc = records._read_all("flan_mini", "winograd_wsc", str(data_dir))[0]
    assert wsc.answer == (
        "The city councilmen refused the demonstrators a permit because the city councilmen "
        "feared violence."
    )


def test_missing_data_dir_names_the_variable_and_fetch_script(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(paths.DataNotFoundError, match="FLAN_MOE_DATA_DIR.*scripts/fetch_data.py"):
        records.read_records("flan_cot", "creak")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(paths.DataNotFoundError, match="flan_cot/creak_train.tsv.*fetch_data.py"):
        records.read_records("flan_cot", "creak")
