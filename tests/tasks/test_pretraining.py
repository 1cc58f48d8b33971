"""The span-corruption pre-training tasks: C4 on TFDS mock data, the local training corpus."""

import numpy as np
import pytest

LENGTHS = {"inputs": 64, "targets": 16}  # span_corruption_lengths(64) = (70, 14)


@pytest.fixture(scope="module")
def registry(data_dir):
    import seqio

    from flan_moe.cli.task_registry import register_tasks

    tasks = register_tasks()
    from flan_moe.data import iterators

    return seqio, tasks, iterators


def _examples(seqio, name, n, split="train"):
    ds = seqio.get_mixture_or_task(name).get_dataset(
        LENGTHS, split=split, shuffle=False, num_epochs=1, trim_output_features=False
    )
    return [ex for _, ex in zip(range(n), ds.as_numpy_iterator())]


def _check_span_corruption(ex, top_id):
    """Inputs: kept tokens + one sentinel per noise span + EOS; targets mirror them."""
    inputs, targets = ex["inputs"], ex["targets"]
    assert inputs[-1] == 1 and targets[-1] == 1
    in_sentinels = inputs[inputs > top_id - 100]
    out_sentinels = targets[targets > top_id - 100]
    spans = len(in_sentinels)
    assert spans >= 1
    np.testing.assert_array_equal(in_sentinels, top_id - np.arange(spans))
    # the targets start with the first sentinel and carry one per noise span (plus one for
    # a trailing kept span)
    assert targets[0] == top_id
    assert len(out_sentinels) in (spans, spans + 1)
    assert len(inputs) <= LENGTHS["inputs"] and len(targets) <= 14


def test_c4_span_corruption_on_mock_data(registry, monkeypatch):
    seqio, tasks, iterators = registry
    import tensorflow_datasets as tfds

    from flan_moe.cli.task_registry import register_tasks

    flan_collection = register_tasks().flan_collection

    monkeypatch.setattr(flan_collection, "REQUIRE_PREPARED", False)
    monkeypatch.setattr(
        flan_collection.MissingTfdsSource, "num_input_examples", lambda s, split: 20
    )
    with tfds.testing.mock_data(num_examples=6):
        examples = _examples(seqio, tasks.pretraining.C4_TASK, 4)
        assert examples  # mock documents are short: 6 of them make a couple of examples
        for ex in examples:
            _check_span_corruption(ex, 258 + 100)  # byte vocabulary + 100 sentinels
        batch = next(
            iterators.make_train_iterator(
                tasks.pretraining.C4_TASK, feature_lengths=LENGTHS, batch_size=2, seed=0
            )
        )
    assert batch["encoder_input_tokens"].shape == (2, 64)
    assert batch["encoder_input_tokens"].max() <= 358


def test_local_corpus_reads_only_training_records(registry):
    _, tasks, _ = registry
    from flan_moe.data import records as rec

    pt = tasks.pretraining
    train = pt.corpus_records("train")
    validation = pt.corpus_records("validation")
    assert {r.example_id for r in train}.isdisjoint(r.example_id for r in validation)
    assert all(rec.split_of(r.example_id) == "train" for r in train[:: max(1, len(train) // 500)])
    datasets = {r.example_id.split("/")[0] for r in train}
    assert datasets == {"flan_mini", "flan_cot"}  # no held-out suite (MMLU/BBH/GSM8K test)
    record = train[0]
    assert record.question.strip() in pt.record_document(record)


def test_local_corpus_task_and_sentencepiece_vocabulary(registry, sentencepiece_model):
    seqio, tasks, iterators = registry
    from flan_moe.data.vocabularies import get_vocabulary

    name = tasks.pretraining.LOCAL_CORPUS_TASK
    for ex in _examples(seqio, name, 3):
        _check_span_corruption(ex, 358)
    # the same task in the project's SentencePiece vocabulary keeps its 100 sentinels
    size = get_vocabulary(str(sentencepiece_model)).vocab_size
    it = iterators.make_train_iterator(
        name, feature_lengths=LENGTHS, batch_size=2, seed=0, vocabulary=str(sentencepiece_model)
    )
    tokens = next(it)["encoder_input_tokens"]
    assert tokens.max() <= size + 99 and (tokens >= size).any()
