"""Model-free predictors (constant and random answers) through the evaluator's interface.

A predictor sees the same `EvalExampleLike` examples as a model (`flan_moe.data.heldout`'s
``EvalExample``) and answers either by text (`Predictor.predict`, generation-style) or by
per-option scores (`Predictor.score_options`, rank-classification-style). Their accuracy is
what the data alone gives (the share of the most common answer letter, chance level), so a
model's numbers can be read against them.

* `ConstantPredictor`: a multiple-choice example (one with ``options``/``choices``) gets
  option ``option_index`` (default 0: "A"); any other example gets the constant answer of its
  subtask (``answers``, e.g. the most common answer among the few-shot exemplars via
  `ConstantPredictor.from_exemplar_answers` and `exemplar_answers`) or ``default``.
* `RandomPredictor`: uniform over the options; otherwise uniform over the subtask's distinct
  exemplar answers (``answer_pool``), else ``default``. Each example's draw depends only on
  (seed, subtask, example_id), never on batching or order.

`run_baseline` grades a predictor on a suite and returns a results entry and the per-example
records, exactly as the evaluator does for a model (`results.grade_examples`, `results.tally`).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import zlib
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from flan_moe.evaluation import metrics, results
from flan_moe.evaluation.results import EvalExampleLike


class Predictor(Protocol):
    """What the evaluator calls on a model or a baseline."""

    @property
    def name(self) -> str: ...

    def predict(self, examples: Sequence[EvalExampleLike]) -> list[str]:
        """One output text per example (what the model would generate)."""
        ...

    def score_options(self, examples: Sequence[EvalExampleLike]) -> list[np.ndarray]:
        """Per example, one log-likelihood-like score per option (higher is better)."""
        ...


def _subtask(example: EvalExampleLike) -> str:
    return getattr(example, "subtask", "") or example.task


def _num_options(example: EvalExampleLike) -> int:
    return len(getattr(example, "options", ()) or getattr(example, "choices", ()))


def _option_text(example: EvalExampleLike, index: int) -> str:
    """What a scorer would output for option `index`: the example's option string ("A"), or
    the label "(A)" when it has only option texts."""
    options = getattr(example, "options", ())
    return options[index] if options else metrics.option_label(index)


def _most_common(answers: Sequence[str]) -> str:
    """Most common answer; ties go to the one seen first."""
    return collections.Counter(answers).most_common(1)[0][0]


@dataclasses.dataclass(frozen=True)
class ConstantPredictor:
    """Always the same answer: option `option_index`, or the subtask's constant answer."""

    option_index: int = 0
    answers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    default: str = ""
    name: str = "constant"

    @classmethod
    def from_exemplar_answers(
        cls,
        exemplar_answers_by_subtask: Mapping[str, Sequence[str]],
        *,
        option_index: int = 0,
        default: str = "",
    ) -> ConstantPredictor:
        """Constant answer per subtask = its most common exemplar answer (ties: first seen)."""
        answers = {k: _most_common(v) for k, v in exemplar_answers_by_subtask.items() if v}
        return cls(option_index=option_index, answers=answers, default=default)

    def _index(self, example: EvalExampleLike) -> int:
        count = _num_options(example)
        if not 0 <= self.option_index < count:
            raise ValueError(
                f"ConstantPredictor(option_index={self.option_index}) but example "
                f"{example.example_id!r} has {count} options"
            )
        return self.option_index

    def predict(self, examples: Sequence[EvalExampleLike]) -> list[str]:
        return [
            _option_text(ex, self._index(ex))
            if _num_options(ex)
            else self.answers.get(_subtask(ex), self.default)
            for ex in examples
        ]

    def score_options(self, examples: Sequence[EvalExampleLike]) -> list[np.ndarray]:
        scores = []
        for ex in examples:
            s = np.full(_require_options(ex), -1.0)
            s[self._index(ex)] = 0.0
            scores.append(s)
        return scores


def _require_options(example: EvalExampleLike) -> int:
    count = _num_options(example)
    if count == 0:
        raise ValueError(
            f"example {example.example_id!r} ({example.task}) has no options, so it cannot be "
            "scored by rank classification; evaluate it with generation"
        )
    return count


@dataclasses.dataclass(frozen=True)
class RandomPredictor:
    """Uniformly random answers, reproducible per (seed, subtask, example_id)."""

    seed: int = 0
    answer_pool: Mapping[str, Sequence[str]] = dataclasses.field(default_factory=dict)
    default: str = ""
    name: str = "random"

    def _rng(self, example: EvalExampleLike) -> np.random.Generator:
        ident = f"{_subtask(example)}\0{example.example_id}".encode()
        return np.random.default_rng([self.seed, zlib.crc32(ident)])

    def predict(self, examples: Sequence[EvalExampleLike]) -> list[str]:
        outputs = []
        for ex in examples:
            rng, count = self._rng(ex), _num_options(ex)
            if count:
                outputs.append(_option_text(ex, int(rng.integers(count))))
                continue
            pool = sorted(set(self.answer_pool.get(_subtask(ex), ())))
            outputs.append(pool[int(rng.integers(len(pool)))] if pool else self.default)
        return outputs

    def score_options(self, examples: Sequence[EvalExampleLike]) -> list[np.ndarray]:
        return [self._rng(ex).standard_normal(_require_options(ex)) for ex in examples]


# ----------------------------------------------------------------------- exemplar answers


def exemplar_answers(
    suite: str, *, shots: int | None = None, data_dir: str | None = None
) -> dict[str, list[str]]:
    """Answers of the few-shot exemplars per subtask, read from the data the prompts use.

    MMLU: the dev CSVs' answer letters; BBH: the "So the answer is X." of each cot-prompts
    file; GSM8K/SVAMP: the GSM8K train exemplars. `shots` limits to the first k (default: all
    the suite offers, `heldout.MAX_SHOTS`).
    """
    from flan_moe.data import heldout, paths  # the data package's pure-Python readers

    if suite not in heldout.SUITES:
        raise ValueError(f"unknown suite {suite!r}; use one of {heldout.SUITES}")
    k = heldout.MAX_SHOTS[suite] if shots is None else shots
    root = str(paths.data_dir(data_dir))
    if suite == "mmlu":
        out = {}
        for subject in heldout.MMLU_SUBJECTS:
            path = paths.data_file(f"mmlu/dev/{subject}_dev.csv", root=root)
            with open(path, encoding="utf-8", newline="") as handle:
                out[subject] = [row[5] for row in csv.reader(handle) if row][:k]
        return out
    if suite == "bbh":
        return {
            stem: [
                shot.answer
                for shot in heldout.parse_bbh_cot_prompt(
                    str(paths.data_file(f"bbh/cot-prompts/{stem}.txt", root=root))
                )[1][:k]
            ]
            for stem in heldout.BBH_FILES
        }
    return {suite: [shot.answer for shot in heldout.gsm8k_train_exemplars(k, data_dir=root)]}


# ------------------------------------------------------------------------------- the path


def run_baseline(
    predictor: Predictor,
    examples_by_subtask: Mapping[str, Sequence[EvalExampleLike]],
    *,
    suite: str,
    mode: str = "direct",
    shots: int = 0,
    method: str = "generation",
    checkpoint: str = "baseline",
    subsample: int | None = None,
    split: str | None = None,
) -> tuple[results.EvalEntry, list[results.PredictionRecord]]:
    """Evaluates a model-free predictor like a model: predict, grade, tally, summarise.

    `method` "generation" grades `predict`'s texts; "scoring" takes the best of
    `score_options` (`metrics.rank_classify`) and grades that option's string. In "cot" mode
    the output is written as "So the answer is X." so it goes through CoT answer extraction.
    `subsample` keeps the first k examples of each subtask (recorded in the entry's key).
    The entry's method is ``f"baseline_{predictor.name}"`` (+ ``"_scoring"`` for scoring).
    """
    if method not in ("generation", "scoring"):
        raise ValueError(f"method must be 'generation' or 'scoring', got {method!r}")
    if subsample is not None and subsample <= 0:
        raise ValueError(f"subsample must be a positive count per subtask, got {subsample}")
    examples = [ex for subset in examples_by_subtask.values() for ex in list(subset)[:subsample]]
    if method == "generation":
        answers = predictor.predict(examples)
    else:
        best = metrics.rank_classify_batch(predictor.score_options(examples))
        answers = [_option_text(ex, i) for ex, i in zip(examples, best)]
    cot = mode == "cot"
    outputs = [f"So the answer is {a}." if cot else a for a in answers]
    records = results.grade_examples(examples, outputs, cot=cot)
    tallied = results.tally(records)
    for subtask in examples_by_subtask:  # a subtask with no examples stays visible, as 0/0
        tallied.setdefault(subtask, results.SubtaskResult(0, 0))
    entry = results.make_entry(
        checkpoint=checkpoint,
        suite=suite,
        mode=mode,
        shots=shots,
        method=f"baseline_{predictor.name}" + ("_scoring" if method == "scoring" else ""),
        subtasks=tallied,
        subsample=subsample,
        split=split,
        metadata={"predictor": repr(predictor)},
    )
    return entry, records
