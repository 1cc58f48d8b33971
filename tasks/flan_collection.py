"""SeqIO tasks over the TFDS datasets behind the FLAN collection's Muffin / T0-SF sources.

HellaSwag, a T0 held-out task, is left out.

Each task reads a TFDS dataset, maps it to the fields of a ``flan_moe.data.records.Record``
(question, optional passage, answer options, answer), and renders it with the same templates as
the local mix (``flan_moe.data.templates``): zero-shot or few-shot by stable hash per example,
options shown or hidden. Few-shot exemplars are the other examples of a window of
``DEFAULT_SHOTS + 1`` consecutive (shuffled) training examples, so they come from the same split
and never include the evaluated example.

Names: ``flan.<dataset>`` (e.g. ``flan.glue_rte``, ``flan.ai2_arc_easy``); submixtures
``flan2021_tfds`` (Muffin-style sources) and ``t0_tfds`` (T0-SF-style sources), each
examples-proportional with a cap; ``flan2022`` mixes ``flan2021_tfds`` 40, ``t0_tfds`` 32 and the
local ``flan_cot`` 5 (Flan 2022's rates; niv2 20 and dialog 3 have no TFDS source here and are
left out, so the rest is renormalised).

These datasets must be prepared first (``tfds build <name>``); a missing one raises an error
naming that command. Tests run them on ``tfds.testing.mock_data``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from flan_moe.data import templates
from flan_moe.data.records import Record, stable_hash
from flan_moe.data.seqio_glue import TEXT_PREPROCESSORS, output_features

from . import local_flan

EXAMPLE_CAP = 30000
# Checked before reading (seqio would otherwise try to download and prepare the dataset);
# tests set it False inside `tfds.testing.mock_data`, where nothing is prepared on disk.
REQUIRE_PREPARED = True
FLAN2022_TFDS_RATES = {"flan2021_tfds": 0.40, "t0_tfds": 0.32, "flan_cot": 0.05}
_YES_NO = ("yes", "no")


def _const(strings) -> tf.Tensor:
    return tf.constant(list(strings), tf.string)


def _pick(options: tf.Tensor, label) -> tf.Tensor:
    return tf.gather(options, tf.cast(label, tf.int32))


def _nli(premise_key: str, hypothesis_key: str, labels: tuple[str, ...]):
    def fn(ex):
        opts = _const(labels)
        return {
            "context": ex[premise_key],
            "question": tf.strings.join(
                ['Based on the passage above, can we conclude that "', ex[hypothesis_key], '"?']
            ),
            "options": opts,
            "answer": _pick(opts, ex["label"]),
        }

    return fn


def _classify(question: str, key: str, labels: tuple[str, ...]):
    def fn(ex):
        opts = _const(labels)
        return {
            "context": ex[key],
            "question": tf.constant(question),
            "options": opts,
            "answer": _pick(opts, ex["label"]),
        }

    return fn


def _pair(question: str, key1: str, key2: str, labels: tuple[str, ...]):
    def fn(ex):
        opts = _const(labels)
        return {
            "context": tf.strings.join(["1: ", ex[key1], "\n2: ", ex[key2]]),
            "question": tf.constant(question),
            "options": opts,
            "answer": _pick(opts, ex["label"]),
        }

    return fn


def _boolq(ex):
    opts = _const(("no", "yes"))
    return {
        "context": ex["passage"],
        "question": tf.strings.join([ex["question"], "?"]),
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _copa(ex):
    opts = tf.stack([ex["choice1"], ex["choice2"]])
    q = tf.where(
        tf.equal(ex["question"], "cause"), "What was the cause?", "What happened as a result?"
    )
    return {
        "context": ex["premise"],
        "question": q,
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _wic(ex):
    opts = _const(_YES_NO[::-1])  # label 1 = same meaning
    return {
        "context": tf.strings.join(["1: ", ex["sentence1"], "\n2: ", ex["sentence2"]]),
        "question": tf.strings.join(
            ['Is the word "', ex["word"], '" used with the same meaning in both sentences?']
        ),
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _arc(ex):
    opts = ex["choices"]["text"]
    idx = tf.argmax(tf.cast(tf.equal(ex["choices"]["label"], ex["answerKey"]), tf.int32))
    return {
        "context": tf.constant(""),
        "question": ex["question"],
        "options": opts,
        "answer": tf.gather(opts, idx),
    }


def _piqa(ex):
    opts = tf.stack([ex["sol1"], ex["sol2"]])
    return {
        "context": tf.constant(""),
        "question": tf.strings.join(["Goal: ", ex["goal"]]),
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _winogrande(ex):
    opts = tf.stack([ex["option1"], ex["option2"]])
    return {
        "context": tf.constant(""),
        "question": tf.strings.join(["Fill in the blank: ", ex["sentence"]]),
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _openbookqa(ex):
    q = ex["question"]
    opts = tf.stack([q["choice_A"], q["choice_B"], q["choice_C"], q["choice_D"]])
    return {
        "context": tf.constant(""),
        "question": q["stem"],
        "options": opts,
        "answer": _pick(opts, ex["answerKey"]),
    }


def _cosmos_qa(ex):
    opts = tf.stack([ex["answer0"], ex["answer1"], ex["answer2"], ex["answer3"]])
    return {
        "context": ex["context"],
        "question": ex["question"],
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _ag_news(ex):
    opts = _const(("World", "Sports", "Business", "Science/Tech"))
    return {
        "context": tf.strings.join([ex["title"], "\n", ex["description"]]),
        "question": tf.constant("Which topic is this article about?"),
        "options": opts,
        "answer": _pick(opts, ex["label"]),
    }


def _free_form(question_fn, answer_fn, context_fn=None):
    def fn(ex):
        return {
            "context": context_fn(ex) if context_fn else tf.constant(""),
            "question": question_fn(ex),
            "options": tf.zeros([0], tf.string),
            "answer": answer_fn(ex),
        }

    return fn


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """One TFDS dataset: its name, how to map it to record fields, its splits and submix."""

    name: str  # task suffix
    tfds_name: str  # "<name>[/<config>]:<version>"
    to_record: Callable
    submix: str
    splits: tuple[tuple[str, str], ...] = (("train", "train"), ("validation", "validation"))

    @property
    def tfds_build_name(self) -> str:
        return self.tfds_name.split(":")[0]


_TRAIN_TEST = (("train", "train"), ("validation", "test"))
_NLI3 = ("yes", "it is not possible to tell", "no")
SPECS: tuple[TfdsSpec, ...] = (
    TfdsSpec(
        "glue_rte", "glue/rte:2.0.0", _nli("sentence1", "sentence2", _YES_NO), "flan2021_tfds"
    ),
    TfdsSpec(
        "glue_mnli",
        "glue/mnli:2.0.0",
        _nli("premise", "hypothesis", _NLI3),
        "flan2021_tfds",
        (("train", "train"), ("validation", "validation_matched")),
    ),
    TfdsSpec(
        "glue_qnli",
        "glue/qnli:2.0.0",
        _pair(
            "Does sentence 2 answer the question in sentence 1?", "question", "sentence", _YES_NO
        ),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "glue_sst2",
        "glue/sst2:2.0.0",
        _classify("What is the sentiment of this review?", "sentence", ("negative", "positive")),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "glue_cola",
        "glue/cola:2.0.0",
        _classify("Is this sentence grammatically acceptable?", "sentence", ("no", "yes")),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "glue_mrpc",
        "glue/mrpc:2.0.0",
        _pair("Do the two sentences mean the same thing?", "sentence1", "sentence2", ("no", "yes")),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "glue_qqp",
        "glue/qqp:2.0.0",
        _pair(
            "Are these two questions asking the same thing?",
            "question1",
            "question2",
            ("no", "yes"),
        ),
        "flan2021_tfds",
    ),
    TfdsSpec("super_glue_boolq", "super_glue/boolq:1.0.2", _boolq, "flan2021_tfds"),
    TfdsSpec(
        "super_glue_cb",
        "super_glue/cb:1.0.2",
        _nli("premise", "hypothesis", ("yes", "no", "it is not possible to tell")),
        "flan2021_tfds",
    ),
    TfdsSpec("super_glue_copa", "super_glue/copa:1.0.2", _copa, "flan2021_tfds"),
    TfdsSpec("super_glue_wic", "super_glue/wic:1.0.2", _wic, "flan2021_tfds"),
    TfdsSpec(
        "super_glue_rte",
        "super_glue/rte:1.0.2",
        _nli("premise", "hypothesis", _YES_NO),
        "flan2021_tfds",
    ),
    *(
        TfdsSpec(
            f"anli_{r}", f"anli/{r}:0.1.0", _nli("context", "hypothesis", _NLI3), "flan2021_tfds"
        )
        for r in ("r1", "r2", "r3")
    ),
    TfdsSpec("ai2_arc_easy", "ai2_arc/ARC-Easy:1.0.0", _arc, "flan2021_tfds"),
    TfdsSpec("ai2_arc_challenge", "ai2_arc/ARC-Challenge:1.0.0", _arc, "flan2021_tfds"),
    TfdsSpec("piqa", "piqa:1.0.0", _piqa, "flan2021_tfds"),
    TfdsSpec("winogrande", "winogrande:1.2.0", _winogrande, "flan2021_tfds"),
    TfdsSpec("openbookqa", "openbookqa:0.1.0", _openbookqa, "flan2021_tfds"),
    TfdsSpec(
        "trivia_qa",
        "trivia_qa/rc.nocontext:1.1.0",
        _free_form(lambda ex: ex["question"], lambda ex: ex["answer"]["value"]),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "natural_questions",
        "natural_questions_open:1.0.0",
        _free_form(lambda ex: tf.strings.join([ex["question"], "?"]), lambda ex: ex["answer"][0]),
        "flan2021_tfds",
    ),
    TfdsSpec(
        "squad_v1",
        "squad/v1.1:3.0.0",
        _free_form(
            lambda ex: ex["question"], lambda ex: ex["answers"]["text"][0], lambda ex: ex["context"]
        ),
        "flan2021_tfds",
    ),
    TfdsSpec("cosmos_qa", "cosmos_qa:1.0.0", _cosmos_qa, "t0_tfds"),
    TfdsSpec("ag_news", "ag_news_subset:1.0.0", _ag_news, "t0_tfds", _TRAIN_TEST),
    TfdsSpec(
        "imdb",
        "imdb_reviews/plain_text:1.0.0",
        _classify("Is this movie review positive or negative?", "text", ("negative", "positive")),
        "t0_tfds",
        _TRAIN_TEST,
    ),
    TfdsSpec(
        "yelp_polarity",
        "yelp_polarity_reviews:0.2.0",
        _classify("Is this review positive or negative?", "text", ("negative", "positive")),
        "t0_tfds",
        _TRAIN_TEST,
    ),
)
SUBMIXES = ("flan2021_tfds", "t0_tfds")


class MissingTfdsSource(seqio.TfdsDataSource):
    """``seqio.TfdsDataSource`` whose missing-data error names the ``tfds build`` command."""

    def __init__(self, *, build_name: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self._build_name = build_name

    def _missing(self, e: Exception) -> FileNotFoundError:
        return FileNotFoundError(
            f"TFDS dataset {self._build_name!r} is not prepared ({type(e).__name__}: {e}). Run "
            f"`tfds build {self._build_name}` (set TFDS_DATA_DIR to choose where), or train on "
            "the local mix ('flan_local') instead."
        )

    def get_dataset(self, *args, **kwargs) -> tf.data.Dataset:
        if REQUIRE_PREPARED:
            builder = tfds.builder(self.tfds_dataset.name, data_dir=self.tfds_dataset.data_dir)
            if not builder.is_prepared():
                raise self._missing(FileNotFoundError(f"no data in {builder.data_dir}"))
        try:
            return super().get_dataset(*args, **kwargs)
        except (AssertionError, KeyError, FileNotFoundError, tf.errors.NotFoundError) as e:
            raise self._missing(e) from e

    def list_shards(self, split: str) -> list[str]:
        """TFDS file shards; one pseudo-shard when TFDS has no split info (mock data, or not
        prepared: ``get_dataset`` then raises the ``tfds build`` error)."""
        try:
            return super().list_shards(split)
        except KeyError:
            return [split]

    def num_input_examples(self, split: str) -> int | None:
        """Size of a prepared split; None when TFDS has no split info (e.g. mock data)."""
        try:
            return super().num_input_examples(split)
        except KeyError:
            return None


def _render_window(name: str, questions, contexts, answers, options, shots: int):
    """Numpy side of few-shot rendering over a window of records (see module docstring)."""
    dec = lambda b: b.decode("utf-8")
    recs = []
    for q, c, a, opts in zip(questions, contexts, answers, options):
        q, c, a = dec(q), dec(c), dec(a)
        opt_tuple = tuple(dec(o) for o in opts if o)
        rid = f"{name}/{stable_hash(q, c, a, *opt_tuple):016x}"
        recs.append(Record(name, rid, q, a, opt_tuple, c))
    cands, targets = [], []
    for r in recs:
        exemplars = []
        if templates.prompt_variant(r) == "fs":
            exemplars = [
                e for e in recs if e.example_id != r.example_id and e.question != r.question
            ]
        rendered = templates.render(r, cot=False, exemplars=exemplars[:shots])
        row = list(rendered.candidates)
        row += [row[-1]] * (shots + 1 - len(row))  # pad with the 0-shot prompt
        cands.append([s.encode("utf-8") for s in row])
        targets.append(rendered.targets.encode("utf-8"))
    return np.array(cands, dtype=object), np.array(targets, dtype=object)


def _preprocessor(spec: TfdsSpec, shots: int = templates.DEFAULT_SHOTS):
    def preprocess(dataset: tf.data.Dataset) -> tf.data.Dataset:
        to_record = tf.autograph.experimental.do_not_convert(spec.to_record)
        ds = dataset.map(to_record, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.padded_batch(shots + 1, drop_remainder=False)

        def render(b):
            cands, targets = tf.numpy_function(
                functools.partial(_render_window, spec.name, shots=shots),
                [b["question"], b["context"], b["answer"], b["options"]],
                [tf.string, tf.string],
            )
            cands.set_shape([None, shots + 1])
            targets.set_shape([None])
            return {"inputs_candidates": cands, "targets": targets}

        return ds.map(tf.autograph.experimental.do_not_convert(render)).unbatch()

    return preprocess


def task_name(spec: TfdsSpec) -> str:
    return f"flan.{spec.name}"


def register() -> None:
    entries: dict[str, list] = {m: [] for m in SUBMIXES}
    for spec in SPECS:
        name = task_name(spec)
        if name not in seqio.TaskRegistry.names():
            seqio.TaskRegistry.add(
                name,
                source=MissingTfdsSource(
                    build_name=spec.tfds_build_name,
                    tfds_name=spec.tfds_name,
                    splits=dict(spec.splits),
                ),
                preprocessors=[_preprocessor(spec), *TEXT_PREPROCESSORS],
                output_features=output_features(),
                metric_fns=[],
            )
        entries[spec.submix].append(name)
    for submix, names in entries.items():
        if submix not in seqio.MixtureRegistry.names():
            seqio.MixtureRegistry.add(
                submix,
                [(n, _capped_rate) for n in names],
            )
    if "flan2022" not in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.add("flan2022", list(FLAN2022_TFDS_RATES.items()))


def _capped_rate(task: seqio.Task) -> float:
    """Examples-proportional with FLAN's cap; needs the prepared dataset's size."""
    n = task.num_input_examples("train")
    if n is None:
        spec = _SPEC_BY_TASK[task.name]
        raise FileNotFoundError(
            f"{task.name}: TFDS has no split sizes for {spec.tfds_build_name!r}; run "
            f"`tfds build {spec.tfds_build_name}`."
        )
    return float(min(n, EXAMPLE_CAP))


_SPEC_BY_TASK = {task_name(s): s for s in SPECS}


def tfds_task_names() -> list[str]:
    return [task_name(s) for s in SPECS]


TFDS_MIXTURES = (*SUBMIXES, "flan2022")
_ = local_flan  # flan2022 mixes in the local flan_cot mixture: it must be registered first
