"""Bootstrap confidence intervals for evaluation scores and paired differences (numpy only).

A score is a statistic of per-question outcomes (1 correct, 0 wrong) grouped by subtask
(MMLU subject, BBH file): ``"micro"`` (correct / questions), ``"macro"`` (mean of subtask
accuracies: the paper's MMLU number) or ``"bbh_tasks"`` (mean over BBH's 23 tasks of the mean
of their files). A bootstrap sample redraws, *within each subtask*, as many questions as it has
(with replacement), so every subtask keeps its size and weight; the 95% interval is the 2.5th
and 97.5th percentiles of the statistic over ``num_samples`` samples, drawn with a fixed seed
(the same inputs always give the same interval).

Subtasks with a single question (``--subsample=1``) have no within-subtask variance to
resample (every resample equals the data, a zero-width interval that says nothing): they are
resampled together as one stratum instead, each such subtask's one question drawn from the
pool of all single-question subtasks of the component.

A *cell* may combine several scores (the report's "Average" column is the mean of four
suites' scores): `interval` takes a list of components and averages them per sample, each
component resampled independently.

`paired_difference` compares two models on the SAME questions: each bootstrap sample uses the
same redrawn questions for both, so the interval of ``score(a) - score(b)`` reflects only the
models' disagreement. A difference whose interval contains 0 is not significant at 95%.

Hand-checkable case (tests/evaluation/test_bootstrap.py): one subtask with outcomes (1, 0)
has four equally likely resamples with accuracies 1, .5, .5, 0.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

#: statistic name -> what it averages (see the module docstring)
STATISTICS = ("micro", "macro", "bbh_tasks")
NUM_SAMPLES = 1000
SEED = 0
LEVEL = 0.95

Outcomes = Mapping[str, Sequence[int] | np.ndarray]  # subtask -> 0/1 per question, in order


@dataclasses.dataclass(frozen=True)
class Component:
    """One score inside a cell: per-subtask outcomes and the statistic that summarises them.

    ``groups`` maps a subtask to its group for ``"bbh_tasks"`` (file -> task); others ignore it.
    """

    outcomes: Outcomes
    statistic: str = "macro"
    groups: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; use one of {STATISTICS}")
        if not any(len(v) for v in self.outcomes.values()):
            raise ValueError("a bootstrap component needs at least one question")


@dataclasses.dataclass(frozen=True)
class Interval:
    """A point estimate and its percentile bootstrap interval (same units as the inputs)."""

    value: float
    low: float
    high: float

    @property
    def significant(self) -> bool:
        """For a difference: its interval excludes 0."""
        return self.low > 0 or self.high < 0

    def scaled(self, factor: float) -> Interval:
        return Interval(self.value * factor, self.low * factor, self.high * factor)


def _arrays(outcomes: Outcomes) -> dict[str, np.ndarray]:
    out = {}
    for name, values in outcomes.items():
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 1 or not np.isin(array, (0.0, 1.0)).all():
            raise ValueError(f"subtask {name!r}: outcomes must be a 1-D list of 0/1")
        if array.size:
            out[name] = array
    return out


def _draws(name: str, size: int, num_samples: int, seed: int) -> np.ndarray:
    """(num_samples, size) resampled question indices of one subtask; they depend only on
    (seed, subtask name, size), so two models with the same questions get the same draws."""
    key = zlib.crc32(f"{name}:{size}".encode())
    rng = np.random.default_rng([seed, key])
    return rng.integers(0, size, size=(num_samples, size))


def combine(
    statistic: str, per_subtask: Mapping[str, np.ndarray], sizes: Mapping[str, int], groups
) -> np.ndarray:
    """Statistic over subtasks of per-subtask accuracies (arrays of any common shape)."""
    names = sorted(per_subtask)
    if statistic == "macro":
        return np.mean([per_subtask[n] for n in names], axis=0)
    if statistic == "micro":
        total = sum(sizes[n] for n in names)
        return sum(per_subtask[n] * sizes[n] for n in names) / total
    by_group: dict[str, list[np.ndarray]] = {}
    for n in names:
        by_group.setdefault(groups.get(n, n), []).append(per_subtask[n])
    return np.mean([np.mean(v, axis=0) for v in by_group.values()], axis=0)


def _component_samples(
    component: Component, num_samples: int, seed: int
) -> tuple[float, np.ndarray]:
    arrays = _arrays(component.outcomes)
    sizes = {n: a.size for n, a in arrays.items()}
    point = {n: a.mean() for n, a in arrays.items()}
    samples = {
        n: a[_draws(n, a.size, num_samples, seed)].mean(axis=1)
        for n, a in arrays.items()
        if a.size > 1
    }
    singles = sorted(n for n, a in arrays.items() if a.size == 1)
    if singles:  # one stratum for the single-question subtasks (module docstring)
        pool = np.concatenate([arrays[n] for n in singles])
        draws = _draws("__single_question_subtasks__", pool.size, num_samples, seed)
        samples.update({n: pool[draws[:, i]] for i, n in enumerate(singles)})
    stat = component.statistic
    return (
        float(combine(stat, point, sizes, component.groups)),
        combine(stat, samples, sizes, component.groups),
    )


def _interval(point: float, samples: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(point, float(low), float(high))


def interval(
    components: Sequence[Component],
    *,
    num_samples: int = NUM_SAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """The mean of the components' statistics and its bootstrap interval."""
    if not components:
        raise ValueError("interval needs at least one component")
    points, samples = zip(
        *(_component_samples(c, num_samples, seed + i) for i, c in enumerate(components))
    )
    return _interval(float(np.mean(points)), np.mean(samples, axis=0), level)


def _check_paired(a: Component, b: Component) -> None:
    sizes_a = {n: len(v) for n, v in a.outcomes.items() if len(v)}
    sizes_b = {n: len(v) for n, v in b.outcomes.items() if len(v)}
    if sizes_a != sizes_b or a.statistic != b.statistic:
        raise ValueError(
            "a paired bootstrap needs both sides evaluated on the same questions (same split, "
            f"subsample and subtasks); got subtask sizes {sizes_a} vs {sizes_b}"
        )


def paired_difference(
    a: Sequence[Component],
    b: Sequence[Component],
    *,
    num_samples: int = NUM_SAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Interval:
    """``mean score(a) - mean score(b)`` with a paired bootstrap interval (same draws)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_difference needs matching components, got {len(a)} and {len(b)}")
    diffs, points = [], []
    for i, (ca, cb) in enumerate(zip(a, b)):
        _check_paired(ca, cb)
        pa, sa = _component_samples(ca, num_samples, seed + i)
        pb, sb = _component_samples(cb, num_samples, seed + i)
        points.append(pa - pb)
        diffs.append(sa - sb)
    return _interval(float(np.mean(points)), np.mean(diffs, axis=0), level)


def outcomes_from_bits(bits: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Per-subtask outcomes from the "0110..." strings a results entry stores."""
    out = {}
    for name, text in bits.items():
        if set(text) - {"0", "1"}:
            raise ValueError(f"subtask {name!r}: outcome string must hold only 0 and 1")
        out[name] = np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")
    return out


def outcomes_to_bits(outcomes: Outcomes) -> dict[str, str]:
    return {n: "".join("1" if v else "0" for v in values) for n, values in outcomes.items()}


@dataclasses.dataclass(frozen=True)
class GapClosed:
    """(proxy - base) / (tuned - base) and its paired bootstrap interval; ``undefined``:
    resamples where tuned == base (left out of the percentiles, counted here)."""

    interval: Interval | None  # None when tuned == base on the data itself
    undefined: int
    num_samples: int


def gap_closed(
    proxy: Sequence[Component],
    base: Sequence[Component],
    tuned: Sequence[Component],
    *,
    num_samples: int = NUM_SAMPLES,
    seed: int = SEED,
    level: float = LEVEL,
) -> GapClosed:
    """The share of the tuned model's gain over the base that proxy-tuning recovers.

    Paired: each bootstrap sample redraws the same questions for all three models (the
    three sides must be evaluated on the same questions); a cell of several components
    (an average of suites) averages them per sample before the ratio.
    """
    if not (len(proxy) == len(base) == len(tuned)) or not proxy:
        raise ValueError("gap_closed needs matching components for proxy, base and tuned")
    points, samples = [], []
    for i, sides in enumerate(zip(proxy, base, tuned)):
        _check_paired(sides[0], sides[1])
        _check_paired(sides[0], sides[2])
        drawn = [_component_samples(c, num_samples, seed + i) for c in sides]
        points.append([p for p, _ in drawn])
        samples.append([s for _, s in drawn])
    (p, b, t), (sp, sb, st) = np.mean(points, axis=0), np.mean(samples, axis=0)
    defined = st != sb
    if t == b:
        return GapClosed(None, int((~defined).sum()), num_samples)
    ratios = (sp[defined] - sb[defined]) / (st[defined] - sb[defined])
    found = _interval(float((p - b) / (t - b)), ratios, level) if ratios.size else None
    return GapClosed(found, int((~defined).sum()), num_samples)
