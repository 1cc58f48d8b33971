"""Flan 2022 export tasks on small files in the exports' schema, written here."""

import collections
import gzip
import json

import pytest

LENGTHS = {"inputs": 64, "targets": 16}


def _row(source, template, i, task="anli_r1"):
    return {
        "inputs": f"{source} {template} question {i}",
        "targets": f"answer {i}",
        "task_name": task,
        "task_source": source,
        "template_type": template,
    }


@pytest.fixture
def exports(tmp_path, monkeypatch, data_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from flan_moe.cli.task_registry import register_tasks

    tasks = register_tasks()

    rows = {
        (source, template): [_row(source, template, i) for i in range(6)]
        for source in ("Flan2021", "T0", "NIv2", "CoT", "Dialog")
        for template in ("zs_opt", "fs_opt", "zs_noopt", "fs_noopt")
    }
    (tmp_path / "cot_submix").mkdir()
    with open(tmp_path / "cot_submix" / "part-0.jsonl", "w") as f:
        for (source, _), rs in rows.items():
            if source == "CoT":
                f.writelines(json.dumps(r) + "\n" for r in rs)
    with gzip.open(tmp_path / "dialog.jsonl.gz", "wt") as f:
        for (source, _), rs in rows.items():
            if source == "Dialog":
                f.writelines(json.dumps(r) + "\n" for r in rs)
    # one parquet file holding every other source (its name names none)
    others = [r for (s, _), rs in rows.items() if s not in ("CoT", "Dialog") for r in rs]
    pq.write_table(pa.Table.from_pylist(others), tmp_path / "mixed.parquet", row_group_size=7)
    monkeypatch.setenv("FLAN2022_DIR", str(tmp_path))
    # A 10000-example shuffle buffer would read these 6-row files ~1700 times per task.
    import seqio

    fe = tasks.flan2022_exports
    for name in (fe.task_name(s, t) for s in fe.SOURCES for t in fe.TEMPLATE_TYPES):
        monkeypatch.setattr(seqio.get_mixture_or_task(name), "_shuffle_buffer_size", 8)
    return fe, rows, tmp_path


def _texts(name, split="train", shuffle=False):
    import seqio

    ds = seqio.get_mixture_or_task(name).get_dataset(
        LENGTHS, split=split, shuffle=shuffle, seed=0, num_epochs=1
    )
    return [
        (ex["inputs_pretokenized"].decode(), ex["targets_pretokenized"].decode())
        for ex in ds.as_numpy_iterator()
    ]


# every (source, template type) in the slow test; one per source and per type by default
SOME = {("Flan2021", "zs_opt"), ("T0", "fs_noopt"), ("NIv2", "zs_noopt"), ("CoT", "fs_opt"),
        ("Dialog", "zs_opt")}  # fmt: skip


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_one_task_per_source_and_template_type(exports, every):
    import seqio

    fe, rows, _ = exports
    assert len(fe.SOURCES) * len(fe.TEMPLATE_TYPES) == 20
    registered = [fe.task_name(s, t) for s in fe.SOURCES for t in fe.TEMPLATE_TYPES]
    assert all(name in seqio.TaskRegistry.names() for name in registered)
    for (source, template), rs in rows.items():
        if not every and (source, template) not in SOME:
            continue
        ours = {"Flan2021": "flan2021", "T0": "t0", "NIv2": "niv2", "CoT": "cot"}.get(
            source, "dialog"
        )
        got = _texts(fe.task_name(ours, template))
        assert sorted(got) == sorted((r["inputs"], r["targets"]) for r in rs), (source, template)


def test_files_naming_a_source_are_read_only_by_it(exports):
    fe, _, root = exports
    assert fe.export_files("cot") == [root / "cot_submix" / "part-0.jsonl", root / "mixed.parquet"]
    assert root / "dialog.jsonl.gz" not in fe.export_files("t0")


def test_mixture_rates_follow_flan_2022(exports):
    """flan2022_exports: 0.4 / 0.32 / 0.2 / 0.05 / 0.03 over the submixes, equal template
    types inside; N = 1200 draws, each source within 4 binomial standard deviations."""
    from flan_moe.data import iterators

    fe, _, _ = exports
    import seqio

    mixture = seqio.get_mixture_or_task(fe.MIXTURE)
    ds = mixture.get_dataset(LENGTHS, split="train", shuffle=True, seed=0, num_epochs=None,
                             copy_pretokenized=True)  # fmt: skip
    n = 1200
    counts = collections.Counter(
        ex["inputs_pretokenized"].decode().split()[0].lower()
        for ex in ds.take(n).as_numpy_iterator()
    )
    for source, rate in {"flan2021": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05,
                         "dialog": 0.03}.items():  # fmt: skip
        share = counts[source] / n
        assert abs(share - rate) <= 4 * (rate * (1 - rate) / n) ** 0.5, (source, share)
    batch = next(iterators.make_train_iterator(fe.MIXTURE, feature_lengths=LENGTHS,
                                               batch_size=2, seed=0))  # fmt: skip
    assert batch["encoder_input_tokens"].shape == (2, 64)


def test_heldout_rows_are_refused_with_file_and_line(exports):
    fe, _, root = exports
    with open(root / "cot_submix" / "part-1.jsonl", "w") as f:
        f.write(json.dumps(_row("CoT", "zs_opt", 0, task="mmlu_abstract_algebra")) + "\n")
    with pytest.raises(ValueError, match=r"part-1.jsonl:1: task 'mmlu_abstract_algebra' is a held"):
        list(fe.stream_examples("cot", "zs_opt", seed=None))


def test_files_are_streamed_not_loaded_whole(exports):
    """The first rows come out before a broken line further down is ever parsed."""
    fe, _, root = exports
    path = root / "cot_submix" / "part-0.jsonl"
    path.write_text(path.read_text() + "{not json\n")
    stream = fe.stream_examples("cot", "zs_opt", seed=None)
    assert next(stream)["targets"] == "answer 0"
    with pytest.raises(ValueError, match=r"part-0.jsonl:\d+: not a JSON object"):
        list(stream)


def test_missing_exports_say_where_to_get_them(exports, monkeypatch, tmp_path):
    fe, _, _ = exports
    monkeypatch.setenv("FLAN2022_DIR", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="conceptofmind/flan2021_submix_original"):
        fe.export_files("t0")
