"""SeqIO tasks over the held-out suites; prompts come from ``flan_moe.data.heldout.load_suite``.

Names (splits ``validation`` and ``test``; only MMLU distinguishes them: val CSVs vs test CSVs,
the other suites have one evaluation set behind both):

- ``mmlu_direct_5shot``, ``mmlu_direct_0shot``, ``mmlu_cot_5shot``, ``mmlu_cot_0shot``
- ``bbh_direct_3shot``, ``bbh_direct_0shot``, ``bbh_cot_3shot``, ``bbh_cot_0shot``
- ``gsm8k_cot_8shot``, ``gsm8k_cot_0shot``, ``gsm8k_direct_8shot``, ``gsm8k_direct_0shot``
  and the same four for ``svamp``.

These are never part of a training mixture.
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from flan_moe.data import heldout
from flan_moe.data.seqio_glue import TEXT_PREPROCESSORS, generator_source, output_features

SETTINGS: dict[str, tuple[int, ...]] = {
    "mmlu": (5, 0),
    "bbh": (3, 0),
    "gsm8k": (8, 0),
    "svamp": (8, 0),
}
SIGNATURE = {
    "inputs_candidates": tf.TensorSpec([None], tf.string),
    "targets": tf.TensorSpec([], tf.string),
    "answer": tf.TensorSpec([], tf.string),
    "subtask": tf.TensorSpec([], tf.string),
    "example_id": tf.TensorSpec([], tf.string),
}


def heldout_task_name(suite: str, mode: str, shots: int) -> str:
    return f"{suite}_{mode}_{shots}shot"


def _make_examples(suite: str, mode: str, shots: int):
    def make(split: str, shuffle: bool, seed: int | None):
        csv_split = "val" if split == "validation" else "test"
        # Candidates from `shots` down to 0 exemplars: the same prompts load_suite builds.
        by_shots = [
            heldout.load_suite(suite, mode=mode, shots=k, split=csv_split)
            for k in range(shots, -1, -1)
        ]
        for subtask, examples in by_shots[0].items():
            for i, ex in enumerate(examples):
                yield {
                    "inputs_candidates": [s[subtask][i].inputs for s in by_shots],
                    "targets": ex.target,
                    "answer": ex.answer,
                    "subtask": ex.subtask,
                    "example_id": ex.example_id,
                }

    return make


def register() -> None:
    for suite, shot_settings in SETTINGS.items():
        for mode in heldout.MODES:
            for shots in shot_settings:
                name = heldout_task_name(suite, mode, shots)
                if name in seqio.TaskRegistry.names():
                    continue
                seqio.TaskRegistry.add(
                    name,
                    source=generator_source(
                        _make_examples(suite, mode, shots),
                        splits=("validation", "test"),
                        signature=SIGNATURE,
                    ),
                    preprocessors=list(TEXT_PREPROCESSORS),
                    output_features=output_features(),
                    metric_fns=[],
                    shuffle_buffer_size=None,
                )


def heldout_task_names() -> list[str]:
    return [
        heldout_task_name(suite, mode, shots)
        for suite, shot_settings in SETTINGS.items()
        for mode in heldout.MODES
        for shots in shot_settings
    ]
