"""The evaluator: one held-out suite (MMLU, BBH, GSM8K, SVAMP) x mode x shots on a predictor.

A *predictor* answers examples: `ModelPredictor` (an ``EncoderDecoder``'s params, by generation
through `flan_moe.decoding` or by rank classification through
`flan_moe.evaluation.scoring`) or `BaselinePredictor` (the model-free constant / random
predictors of `flan_moe.evaluation.baselines`). `evaluate` runs either through the same path:

1. load the suite (`flan_moe.data.heldout.load_suite`) with the model's input length, so a
   few-shot prompt that does not fit drops whole exemplars (the oldest first), never the question;
2. keep the first ``subsample`` examples of each subtask (when asked);
3. predict: generate an output text, or score every answer option and output the best one
   ("score" needs mode "direct"; examples with no closed option set are generated instead,
   counted in the metadata as ``generated_instead_of_scored``);
4. grade (`results.grade_examples`: BBH exact match, MMLU option letter/text, last number for
   GSM8K/SVAMP, "So the answer is X." extraction in CoT mode) and tally per subtask;
5. return a results entry (`results.make_entry`) and the per-example prediction records.

Each entry's metadata also holds ``effective_shots`` (the distribution of exemplars kept),
``intervals`` (95% bootstrap intervals, `flan_moe.evaluation.bootstrap`) and, for a model's
generations, ``decode_cap`` (how many outputs hit ``max_decode_len``; generation ends at EOS
or at a stop sequence, `ModelPredictor.set_decode`). `default_max_decode_len` sizes the cap
per suite and mode from the reference answers.

Nothing is cut silently: ``metadata["truncation"]`` counts the prompts that lost exemplars to
fit ``max_input_tokens`` and the prompts still too long after that, which the model predictor
cuts from the LEFT at the token level (the question's end and the "Answer:" cue stay).

Parallelism: with a ``mesh`` (`flan_moe.partitioning.make_mesh`), params are sharded by the
logical axis rules (model / expert parallel) and every batch is split over the data x expert
axes (data parallel); the same jitted functions run SPMD. Batches are padded to a few bucket
shapes (batch size and input length rounded up to powers of two) so a sweep compiles a handful
of programs, not one per batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple, Protocol, TextIO

import jax
import jax.numpy as jnp
import numpy as np

from flan_moe import decoding, partitioning
from flan_moe.evaluation import bootstrap, results, scoring
from flan_moe.model.config import ModelConfig
from flan_moe.model.transformer import EncoderDecoder

Method = Literal["generate", "score"]
METHODS: tuple[str, ...] = ("generate", "score")


# ------------------------------------------------------------------------------- progress


class Progress:
    """A progress line with rate and ETA, printed at most every ``every_s`` seconds and at the
    end: ``[mmlu direct 5-shot generation] 120/228 (53%) 14.2 ex/s elapsed 0:08 ETA 0:08``."""

    def __init__(
        self, total: int, label: str, *, stream: TextIO | None = None, every_s: float = 10.0
    ) -> None:
        self.total, self.label, self.every_s = total, label, every_s
        self.stream = sys.stderr if stream is None else stream
        self.done = 0
        self.start = self._last = time.perf_counter()

    @staticmethod
    def _clock(seconds: float) -> str:
        seconds = int(round(seconds))
        h, rest = divmod(seconds, 3600)
        return (f"{h}:" if h else "") + f"{rest // 60:0{2 if h else 1}d}:{rest % 60:02d}"

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (
            f"[{self.label}] {self.done}/{self.total} ({pct:.0f}%) {rate:.1f} ex/s "
            f"elapsed {self._clock(elapsed)} ETA {self._clock(eta) if eta == eta else '?'}"
        )

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.done >= self.total or now - self._last >= self.every_s:
            self._last = now
            print(self.line(), file=self.stream, flush=True)


# ------------------------------------------------------------------------------ predictors


class OptionScores(NamedTuple):
    """Per-option log-likelihoods and target token counts (None: not token based)."""

    log_likelihoods: np.ndarray
    token_lengths: np.ndarray | None


class EvalPredictor(Protocol):
    """What `evaluate` calls. ``name``: "model", or the baseline's name."""

    @property
    def name(self) -> str: ...

    def predict(self, examples: Sequence[Any], *, progress: Progress | None = None) -> list[str]:
        """One output text per example."""
        ...

    def score_options(
        self, examples: Sequence[Any], *, progress: Progress | None = None
    ) -> list[OptionScores]:
        """Scores of each example's ``options`` (higher is better)."""
        ...


@dataclasses.dataclass
class BaselinePredictor:
    """A `flan_moe.evaluation.baselines` predictor (ConstantPredictor / RandomPredictor)
    behind the evaluator's interface. In CoT mode its answers are written as
    "So the answer is X." so that they pass through the same answer extraction as a model's."""

    baseline: Any

    @property
    def name(self) -> str:
        return str(self.baseline.name)

    def predict(self, examples: Sequence[Any], *, progress: Progress | None = None) -> list[str]:
        out = list(self.baseline.predict(list(examples)))
        if progress is not None:
            progress.update(len(examples))
        return out

    def score_options(
        self, examples: Sequence[Any], *, progress: Progress | None = None
    ) -> list[OptionScores]:
        out = [OptionScores(np.asarray(s), None) for s in self.baseline.score_options(examples)]
        if progress is not None:
            progress.update(len(examples))
        return out


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class ModelPredictor:
    """An ``EncoderDecoder`` (config + params) answering prompts with a vocabulary.

    Args:
      config: the model config (from the checkpoint).
      params: unboxed params (from `flan_moe.training.checkpoints.load_params`).
      vocab: the vocabulary the model was trained with (``get_vocabulary(spec)``).
      max_input_len: encoder length; longer prompts are cut from the left and counted.
      decode: generation settings (`flan_moe.decoding.DecodeConfig`).
      batch_size: examples per device batch (rounded up to the mesh's data x expert size).
      max_option_len: longest scored option in tokens (EOS included).
      mesh: optional device mesh; params and batches are sharded over it.
    """

    name = "model"

    def __init__(
        self,
        config: ModelConfig,
        params: Any,
        vocab: Any,
        *,
        max_input_len: int,
        decode: decoding.DecodeConfig | None = None,
        batch_size: int = 16,
        max_option_len: int = 64,
        mesh: jax.sharding.Mesh | None = None,
    ) -> None:
        if vocab.vocab_size > config.vocab_size:
            raise ValueError(
                f"the vocabulary has {vocab.vocab_size} ids but the model only "
                f"{config.vocab_size}; evaluate with the vocabulary the model was trained with"
            )
        if max_input_len < 2:
            raise ValueError(f"max_input_len must be >= 2, got {max_input_len}")
        self.config, self.vocab, self.mesh = config, vocab, mesh
        self.model = EncoderDecoder(config)
        self.max_input_len = max_input_len
        self.decode = decode or decoding.DecodeConfig()
        self.max_option_len = max_option_len
        parts = 1 if mesh is None else mesh.shape["data"] * mesh.shape["expert"]
        self.data_parts = parts
        self.batch_size = _round_up(max(batch_size, 1), parts)
        self.params = self._place_params(params)
        self._generators: dict[decoding.DecodeConfig, Any] = {}
        self.set_decode(self.decode)
        #: outputs are cut at the first of these (`decoding.cut_at_stop`); see `set_decode`
        self.stop_sequences: tuple[str, ...] = ()
        self._score = scoring.make_option_scorer(self.model)
        #: per-example info of the last call (prompt tokens, whether it was cut)
        self.last_info: list[dict[str, Any]] = []

    def set_decode(
        self, decode: decoding.DecodeConfig, stop_sequences: Sequence[str] | None = None
    ) -> None:
        """Generation settings for the next calls (compiled once per distinct setting)."""
        if decode not in self._generators:
            self._generators[decode] = decoding.make_generate_fn(
                self.model, config=decode, eos_id=self.vocab.eos_id
            )
        self.decode, self._generate = decode, self._generators[decode]
        if stop_sequences is not None:
            self.stop_sequences = tuple(stop_sequences)

    # -- placement ---------------------------------------------------------------------------

    def _rules(self):
        return contextlib.nullcontext() if self.mesh is None else partitioning.axis_rules(self.mesh)

    def _place_params(self, params: Any) -> Any:
        if self.mesh is None:
            return jax.tree_util.tree_map(jnp.asarray, params)
        tokens = jax.ShapeDtypeStruct((1, 1), np.int32)
        abstract = jax.eval_shape(lambda t: self.model.init(jax.random.PRNGKey(0), t, t, t), tokens)
        shardings = partitioning.params_shardings(abstract["params"], self.mesh)
        return jax.device_put(params, shardings)

    def _put(self, array: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        return partitioning.shard_batch({"x": array}, self.mesh)["x"]

    # -- prompts -----------------------------------------------------------------------------

    def tokenize(self, examples: Sequence[Any]) -> list[list[int]]:
        """Prompt ids + EOS; a prompt longer than ``max_input_len`` keeps its LAST tokens."""
        ids_list, self.last_info = [], []
        for ex in examples:
            ids = list(self.vocab.encode(ex.inputs)) + [self.vocab.eos_id]
            cut = max(0, len(ids) - self.max_input_len)
            ids_list.append(ids[cut:])
            self.last_info.append({"prompt_tokens": len(ids), "cut_tokens": cut})
        return ids_list

    def _batches(self, ids: list[list[int]]):
        """(indices, padded encoder batch) in descending prompt length, bucketed shapes."""
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            rows = _round_up(
                decoding.bucket_size(len(idx), maximum=self.batch_size, minimum=1),
                self.data_parts,
            )
            length = decoding.bucket_size(max(len(ids[i]) for i in idx), maximum=self.max_input_len)
            yield idx, decoding.pad_rows([ids[i] for i in idx], length, rows)

    # -- generation --------------------------------------------------------------------------

    def predict(self, examples: Sequence[Any], *, progress: Progress | None = None) -> list[str]:
        ids = self.tokenize(examples)
        outputs: list[str] = [""] * len(ids)
        key = jax.random.PRNGKey(self.decode.seed)
        with self._rules():
            for n, (idx, batch) in enumerate(self._batches(ids)):
                tokens, _ = self._generate(
                    self.params, self._put(batch), jax.random.fold_in(key, n)
                )
                tokens = np.asarray(jax.device_get(tokens))
                for row, i in enumerate(idx):
                    generated = tokens[row].tolist()
                    eos = self.vocab.eos_id
                    used = generated.index(eos) + 1 if eos in generated else len(generated)
                    self.last_info[i]["output_tokens"] = used  # EOS included
                    self.last_info[i]["stopped_at_eos"] = eos in generated
                    text, stopped = decoding.cut_at_stop(
                        self.vocab.decode(generated), self.stop_sequences
                    )
                    self.last_info[i]["stopped_at_sequence"] = stopped
                    outputs[i] = text
                if progress is not None:
                    progress.update(len(idx))
        return outputs

    # -- scoring -----------------------------------------------------------------------------

    def score_options(
        self, examples: Sequence[Any], *, progress: Progress | None = None
    ) -> list[OptionScores]:
        ids = self.tokenize(examples)
        option_ids = []
        for ex in examples:
            if not ex.options:
                raise ValueError(
                    f"example {ex.example_id!r} has no answer options to score; generate it"
                )
            option_ids.append(
                [scoring.encode_option(self.vocab, o, self.max_option_len) for o in ex.options]
            )
        out: list[OptionScores | None] = [None] * len(ids)
        with self._rules():
            for idx, batch in self._batches(ids):
                num_opts = max(2, max(len(option_ids[i]) for i in idx))
                num_opts = 1 << (num_opts - 1).bit_length()
                t = decoding.bucket_size(
                    max(len(o) for i in idx for o in option_ids[i]),
                    maximum=self.max_option_len,
                    minimum=8,
                )
                opts = np.zeros((batch.shape[0], num_opts, t), np.int32)
                for row, i in enumerate(idx):
                    for j, o in enumerate(option_ids[i]):
                        opts[row, j, : len(o)] = o
                ll = np.asarray(jax.device_get(self._score(self.params, self._put(batch), opts)))
                for row, i in enumerate(idx):
                    k = len(option_ids[i])
                    out[i] = OptionScores(
                        ll[row, :k].astype(np.float64), np.array([len(o) for o in option_ids[i]])
                    )
                if progress is not None:
                    progress.update(len(idx))
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------- evaluate


class EvalResult(NamedTuple):
    entry: results.EvalEntry
    records: list[results.PredictionRecord]


def entry_method(
    method: Method,
    *,
    length_normalized: bool = False,
    decode: decoding.DecodeConfig | None = None,
    baseline: str | None = None,
) -> str:
    """The results-entry method name (part of the key a sweep skips on).

    Model: "generation" (greedy), "generation_beam<k>", "generation_sample_t<T>[_k<top_k>]",
    "scoring", "scoring_len_norm". Baseline: "baseline_<name>" (+ "_scoring"), as
    `baselines.run_baseline` names them.
    """
    if baseline is not None:
        return f"baseline_{baseline}" + ("_scoring" if method == "score" else "")
    if method == "score":
        return "scoring_len_norm" if length_normalized else "scoring"
    if decode is None or decode.strategy == "greedy":
        return "generation"
    if decode.strategy == "beam":
        return f"generation_beam{decode.beam_size}"
    return f"generation_sample_t{decode.temperature:g}" + (
        f"_k{decode.top_k}" if decode.top_k else ""
    )


def method_name(predictor: EvalPredictor, method: Method, *, length_normalized: bool) -> str:
    """`entry_method` for this predictor."""
    if isinstance(predictor, BaselinePredictor):
        return entry_method(method, baseline=predictor.name)
    return entry_method(
        method, length_normalized=length_normalized, decode=getattr(predictor, "decode", None)
    )


@functools.lru_cache(maxsize=64)
def default_max_decode_len(
    suite: str, mode: str, vocabulary: str = "byte", data_dir: str | None = None
) -> int:
    """Decode cap of a suite and mode: 1.25 x the longest reference answer
    (`heldout.reference_answers`) in tokens of ``vocabulary``, + EOS, rounded up to 16.

    With the byte vocabulary: MMLU direct 16, MMLU CoT 1680, BBH direct 240, BBH CoT 2224,
    GSM8K/SVAMP CoT 464 (the BBH CoT exemplar answers run to 1773 bytes)."""
    from flan_moe.data import heldout
    from flan_moe.data.vocabularies import get_vocabulary

    vocab = get_vocabulary(vocabulary)
    longest = max(
        len(vocab.encode(a)) for a in heldout.reference_answers(suite, mode, data_dir=data_dir)
    )
    return 16 * math.ceil((math.ceil(1.25 * longest) + 1) / 16)


def select(
    examples_by_subtask: Mapping[str, Sequence[Any]], subsample: int | None
) -> dict[str, list[Any]]:
    """The first ``subsample`` examples of each subtask (all when None)."""
    if subsample is not None and subsample <= 0:
        raise ValueError(f"subsample must be a positive count per subtask, got {subsample}")
    return {name: list(exs)[:subsample] for name, exs in examples_by_subtask.items()}


def evaluate(
    predictor: EvalPredictor,
    *,
    suite: str,
    mode: str = "direct",
    shots: int = 0,
    method: Method = "generate",
    length_normalized: bool = False,
    split: str = "val",
    subsample: int | None = None,
    checkpoint: str = "",
    data_dir: str | None = None,
    max_input_tokens: int | None = None,
    vocabulary: str = "byte",
    show_progress: bool = True,
    progress_stream: TextIO | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> EvalResult:
    """Evaluates ``predictor`` on one suite (steps in the module docstring).

    ``max_input_tokens`` / ``vocabulary``: the model's encoder length and vocabulary, used to fit
    few-shot prompts by dropping exemplars (None: prompts are used whole; a model predictor
    still cuts over-long ones from the left, counted).
    """
    _check_method(method, mode)
    name = method_name(predictor, method, length_normalized=length_normalized)
    started = time.perf_counter()
    loaded, chosen, examples, dropped = _load_examples(
        suite, mode, shots, split, subsample, data_dir, max_input_tokens, vocabulary
    )
    label = f"{checkpoint + ' ' if checkpoint else ''}{suite} {mode} {shots}-shot {name}"
    progress = Progress(len(examples), label, stream=progress_stream) if show_progress else None
    cot = mode == "cot"
    extras: list[dict[str, Any]] = [{} for _ in examples]
    generated_instead: dict[str, int] = {}
    if method == "generate":
        outputs: list[str | None] = list(predictor.predict(examples, progress=progress))
        _merge_info(predictor, range(len(examples)), extras)
    else:
        sets = scoring.answer_sets(loaded)  # over every example, not just the subsample
        outputs, examples = _score(predictor, sets, examples, extras, progress, length_normalized)
        for ex, extra in zip(examples, extras):
            if extra.get("generated_instead_of_scored"):
                generated_instead[ex.subtask] = generated_instead.get(ex.subtask, 0) + 1
    if isinstance(predictor, BaselinePredictor) and cot:
        outputs = [f"So the answer is {o}." for o in outputs]

    records = [
        dataclasses.replace(record, extra=extra) if extra else record
        for record, extra in zip(results.grade_examples(examples, outputs, cot=cot), extras)
    ]
    tallied = results.tally(records)
    for subtask in chosen:  # a subtask with no examples stays visible, as 0/0
        tallied.setdefault(subtask, results.SubtaskResult(0, 0))
    meta = _run_metadata(predictor, examples, extras, time.perf_counter() - started)
    meta["truncation"]["max_input_tokens"] = max_input_tokens
    meta["truncation"]["prompts_with_exemplars_dropped"] = dropped
    meta["effective_shots"] = effective_shots(examples, shots)
    if isinstance(predictor, ModelPredictor):
        meta["batch_size"] = predictor.batch_size
        meta.update(_decode_metadata(predictor, extras))
    if method == "score":
        meta["length_normalized"] = length_normalized
        meta["generated_instead_of_scored"] = generated_instead
    meta.update(metadata or {})
    outcomes = results.outcomes_of(records)
    meta["intervals"] = score_intervals(suite, outcomes)
    entry = results.make_entry(
        checkpoint=checkpoint,
        suite=suite,
        mode=mode,
        shots=shots,
        method=name,
        subtasks=tallied,
        subsample=subsample,
        split=split if suite == "mmlu" else None,
        metadata=meta,
        outcomes=outcomes,
    )
    return EvalResult(entry, records)


def _check_method(method: str, mode: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {METHODS}")
    if method == "score" and mode != "direct":
        raise ValueError(
            "rank classification (method 'score') needs mode 'direct': a chain-of-thought "
            "answer comes after generated reasoning, so use method 'generate' for mode 'cot'"
        )


def _load_examples(
    suite: str,
    mode: str,
    shots: int,
    split: str,
    subsample: int | None,
    data_dir: str | None,
    max_input_tokens: int | None,
    vocabulary: str,
) -> tuple[dict, dict, list, int]:
    """(every example by subtask, the subsample by subtask, the subsample's examples in
    order, how many prompts lost exemplars to fit ``max_input_tokens``)."""
    from flan_moe.data import heldout  # pure-Python held-out readers

    loaded = heldout.load_suite(
        suite,
        mode=mode,
        shots=shots,
        split=split,
        data_dir=data_dir,
        max_input_tokens=max_input_tokens,
        vocabulary=vocabulary,
    )
    chosen = select(loaded, subsample)
    examples = [ex for exs in chosen.values() for ex in exs]
    dropped = 0
    if max_input_tokens is not None and shots > 0:
        whole = heldout.load_suite(suite, mode=mode, shots=shots, split=split, data_dir=data_dir)
        full_inputs = {ex.example_id: ex.inputs for exs in whole.values() for ex in exs}
        dropped = sum(full_inputs[ex.example_id] != ex.inputs for ex in examples)
    return loaded, chosen, examples, dropped


def _run_metadata(
    predictor: EvalPredictor, examples: Sequence[Any], extras: Sequence[Mapping], seconds: float
) -> dict[str, Any]:
    """Timing and left-truncation counts of one evaluation."""
    return {
        "predictor": predictor.name,
        "num_examples": len(examples),
        "seconds": round(seconds, 3),
        "examples_per_second": round(len(examples) / seconds, 3) if seconds > 0 else None,
        "truncation": {
            "prompts_truncated_left": sum(1 for e in extras if e.get("cut_tokens", 0) > 0),
            "tokens_truncated_left": sum(e.get("cut_tokens", 0) for e in extras),
        },
    }


def effective_shots(examples: Sequence[Any], requested: int) -> dict[str, Any]:
    """The distribution of exemplars actually kept in the prompts, and its mean."""
    counts: dict[str, int] = {}
    for ex in examples:
        kept = int(getattr(ex, "shots_used", requested))
        counts[str(kept)] = counts.get(str(kept), 0) + 1
    total = sum(counts.values())
    mean = sum(int(k) * n for k, n in counts.items()) / total if total else None
    return {"requested": requested, "counts": dict(sorted(counts.items())), "mean": mean}


def _decode_metadata(predictor: ModelPredictor, extras: Sequence[Mapping[str, Any]]) -> dict:
    """Decode settings and how generations ended (EOS, stop sequence, or the length cap)."""
    decoded = [e for e in extras if "stopped_at_eos" in e]
    if not decoded:
        return {}
    hit = sum(not e["stopped_at_eos"] and not e.get("stopped_at_sequence") for e in decoded)
    return {
        "decode": dataclasses.asdict(predictor.decode),
        "stop_sequences": list(predictor.stop_sequences),
        "outputs_without_eos": sum(not e["stopped_at_eos"] for e in decoded),
        "decode_cap": {
            "max_decode_len": predictor.decode.max_decode_len,
            "generated": len(decoded),
            "stopped_at_sequence": sum(bool(e.get("stopped_at_sequence")) for e in decoded),
            "hit": hit,
        },
    }


def score_intervals(suite: str, outcomes: Mapping[str, str]) -> dict[str, list[float]]:
    """{statistic: [value, low, high]}: 95% bootstrap intervals (`bootstrap`) of the micro and
    macro averages (and BBH's 23-task average) of one entry's per-question outcomes."""
    arrays = bootstrap.outcomes_from_bits(outcomes)
    if not any(len(a) for a in arrays.values()):
        return {}
    family = results.suite_family(suite)
    stats = ["micro", "macro"] + (["bbh_tasks"] if family == "bbh" else [])
    groups = {n: results.bbh_task_of(n) for n in arrays if n in results.BBH_FILES}
    out = {}
    for stat in stats:
        found = bootstrap.interval([bootstrap.Component(arrays, stat, groups)])
        out[stat] = [found.value, found.low, found.high]
    return out


def _merge_info(predictor: Any, positions: Sequence[int], extras: list[dict[str, Any]]) -> None:
    """Copies a model predictor's per-example info of its last call into ``extras``."""
    info = getattr(predictor, "last_info", None)
    if not isinstance(predictor, ModelPredictor) or info is None:
        return
    for pos, item in zip(positions, info):
        extras[pos].update(item)


def _score(
    predictor: EvalPredictor,
    sets: Mapping[str, Sequence[str]],
    examples: list[Any],
    extras: list[dict[str, Any]],
    progress: Progress | None,
    length_normalized: bool,
) -> tuple[list[str | None], list[Any]]:
    """Rank classification where an example has options; generation where it has none.
    ``sets``: each subtask's distinct gold answers (`scoring.answer_sets` of the whole suite)."""
    with_options = []
    for ex in examples:
        options = scoring.infer_options(ex, sets.get(ex.subtask, ()))
        if options and tuple(ex.options) != options:
            ex = dataclasses.replace(ex, options=options)
        with_options.append(ex)
    examples = with_options
    outputs: list[str | None] = [None] * len(examples)
    scored = [i for i, ex in enumerate(examples) if ex.options]
    generated = [i for i, ex in enumerate(examples) if not ex.options]
    if scored:
        scores = predictor.score_options([examples[i] for i in scored], progress=progress)
        _merge_info(predictor, scored, extras)
        for i, s in zip(scored, scores):
            use_norm = length_normalized and s.token_lengths is not None
            best = scoring.rank(
                s.log_likelihoods,
                s.token_lengths if s.token_lengths is not None else np.ones(len(s[0])),
                length_normalized=use_norm,
            )
            outputs[i] = examples[i].options[best]
            extras[i]["options"] = list(examples[i].options)
            extras[i]["scores"] = [float(x) for x in s.log_likelihoods]
            if s.token_lengths is not None:
                extras[i]["option_tokens"] = [int(x) for x in s.token_lengths]
    if generated:
        texts = predictor.predict([examples[i] for i in generated], progress=progress)
        _merge_info(predictor, generated, extras)
        for i, text in zip(generated, texts):
            outputs[i] = text
            extras[i]["generated_instead_of_scored"] = True
    return outputs, examples
