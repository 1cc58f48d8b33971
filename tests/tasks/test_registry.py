"""Every registered task and mixture builds; mixing rates; held-out data stays out of training.

TFDS-backed tasks run on ``tfds.testing.mock_data`` (this machine has no TFDS downloads).
"""

import collections

import numpy as np
import pytest

TINY = {"inputs": 128, "targets": 64}


@pytest.fixture(scope="module")
def registry(data_dir):
    import seqio

    from flan_moe.cli.task_registry import register_tasks

    tasks = register_tasks()
    from flan_moe.data import iterators

    return seqio, tasks, iterators


def _first_example(seqio, name, split="train", lengths=TINY):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        lengths, split=split, shuffle=False, num_epochs=1, trim_output_features=False
    )
    return next(ds.as_numpy_iterator())


@pytest.mark.parametrize("group", ["local", "heldout"])
def test_every_local_and_heldout_task_yields_an_example(registry, group):
    seqio, tasks, _ = registry
    if group == "local":
        names, split = tasks.local_flan.local_task_names(), "validation"
    else:
        names, split = tasks.heldout.heldout_task_names(), "validation"
    assert len(names) == {"local": 21, "heldout": 16}[group]
    for name in names:
        ex = _first_example(seqio, name, split)
        assert ex["inputs"].dtype == np.int32 and ex["inputs"][-1] == 1, name
        assert ex["targets"].size > 1, name


def test_local_mixture_yields_a_batch(registry):
    _, _, iterators = registry
    it = iterators.make_train_iterator("flan2022_local", feature_lengths=TINY, batch_size=4, seed=0)
    batch = next(it)
    assert batch["encoder_input_tokens"].shape == (4, 128)
    assert it.truncation.as_dict()["examples"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["flan_mini", "flan_cot", "flan_local"])
def test_other_local_mixtures_yield_a_batch(registry, name):
    _, _, iterators = registry
    batch = next(iterators.make_train_iterator(name, feature_lengths=TINY, batch_size=4, seed=0))
    assert batch["decoder_target_tokens"].shape == (4, 64)


def test_mixing_rates_match_the_requested_proportions(registry):
    """flan2022_local: flan_mini 40 : flan_cot 5, each examples-proportional with a 3000 cap.

    N = 1500 sampled examples; each dataset's share must be within 4 binomial standard
    deviations (sqrt(p (1 - p) / N)) of the requested rate.
    """
    seqio, tasks, _ = registry
    lf = tasks.local_flan
    expected = {}
    for collection, weight in (("flan_mini", 40 / 45), ("flan_cot", 5 / 45)):
        capped = {d: lf._capped_rate(collection, d) for d in lf.COLLECTIONS[collection]}
        total = sum(capped.values())
        for d, r in capped.items():
            expected[f"{collection}.{d}"] = weight * r / total
    assert expected["flan_mini.boolq"] == pytest.approx(
        40
        / 45
        * 3000
        / sum(
            min(len(tasks.local_flan.rec.read_records("flan_mini", d)), 3000)
            for d in lf.COLLECTIONS["flan_mini"]
        )
    )
    n = 1500
    ds = seqio.get_mixture_or_task("flan2022_local").get_dataset(
        None, split="train", seed=0, passthrough_features=["dataset"], trim_output_features=False
    )
    counts = collections.Counter(ex["dataset"].decode() for ex in ds.take(n).as_numpy_iterator())
    for name, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(counts[name] / n - p) <= 4 * sd, (name, counts[name] / n, p)


def test_heldout_data_is_in_no_training_mixture(registry):
    seqio, tasks, _ = registry
    heldout = set(tasks.heldout.heldout_task_names())
    training_prefixes = ("flan_mini.", "flan_cot.", "flan.", "flan2022.")
    for mixture in tasks.TRAINING_MIXTURES:
        leaves = {t.name for t in seqio.get_mixture_or_task(mixture).tasks}
        assert leaves and not leaves & heldout, mixture
        assert all(name.startswith(training_prefixes) for name in leaves), mixture
    # No local training dataset reads a held-out file.
    from flan_moe.data import records

    assert not {"gsm8k_test", "svamp"} & set(records.MINI_DATASETS)
    for registered in seqio.MixtureRegistry.names():
        if registered in tasks.TRAINING_MIXTURES:
            continue
        leaves = {t.name for t in seqio.get_mixture_or_task(registered).tasks}
        assert not leaves & heldout, registered


@pytest.fixture
def mock_tfds(registry, monkeypatch):
    import tensorflow_datasets as tfds

    from flan_moe.cli.task_registry import register_tasks

    flan_collection = register_tasks().flan_collection

    monkeypatch.setattr(flan_collection, "REQUIRE_PREPARED", False)
    monkeypatch.setattr(
        flan_collection.MissingTfdsSource, "num_input_examples", lambda s, split: 20
    )
    with tfds.testing.mock_data(num_examples=12):
        yield flan_collection


def test_tfds_tasks_template_and_pack_on_mock_data(registry, mock_tfds):
    seqio, _, iterators = registry
    for name in ("flan.glue_rte", "flan.ai2_arc_easy", "flan.trivia_qa"):
        ex = _first_example(seqio, name)
        assert ex["inputs"][-1] == 1 and ex["targets"][-1] == 1
        assert ex["inputs_pretokenized"] and ex["targets_pretokenized"], name
        if name == "flan.glue_rte":
            assert b"Based on the passage above, can we conclude that" in ex["inputs_pretokenized"]
    batch = next(
        iterators.make_train_iterator("t0_tfds", feature_lengths=TINY, batch_size=2, seed=0)
    )
    assert batch["encoder_segment_ids"].shape == (2, 128)


@pytest.mark.slow
def test_every_tfds_task_and_the_flan2022_mixture_on_mock_data(registry, mock_tfds):
    seqio, _, iterators = registry
    for name in mock_tfds.tfds_task_names():
        ex = _first_example(seqio, name)
        assert ex["inputs"][-1] == 1, name
    batch = next(
        iterators.make_train_iterator("flan2022", feature_lengths=TINY, batch_size=2, seed=0)
    )
    assert batch["encoder_input_tokens"].shape == (2, 128)


def test_tfds_few_shot_window_never_uses_the_evaluated_example():
    from flan_moe.cli.task_registry import register_tasks

    flan_collection = register_tasks().flan_collection

    qs = np.array([b"q1", b"q2", b"q3", b"q4"], dtype=object)
    empty = np.array([b""] * 4, dtype=object)
    answers = np.array([b"a1", b"a2", b"a3", b"a4"], dtype=object)
    options = np.array([[b"x", b"y"]] * 4, dtype=object)
    cands, targets = flan_collection._render_window("toy", qs, empty, answers, options, shots=3)
    assert cands.shape == (4, 4) and list(targets) == [b"a1", b"a2", b"a3", b"a4"]
    for i, row in enumerate(cands):
        own = f"q{i + 1}".encode()
        for c in row:
            assert c.count(own) == 1  # the query itself, never as an exemplar


def test_missing_tfds_dataset_names_the_build_command(registry):
    _, _, iterators = registry
    with pytest.raises(FileNotFoundError, match="tfds build glue/rte"):
        iterators.make_train_iterator("flan.glue_rte", feature_lengths=TINY, batch_size=2, seed=0)
