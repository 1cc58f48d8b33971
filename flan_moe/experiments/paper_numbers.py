"""The paper's own numbers (Shen et al. 2023, "Mixture-of-Experts Meets Instruction Tuning",
arXiv 2305.14705), for printing beside ours.

Each number names the table it comes from and where we read it. They are the paper's models
at the paper's scale and protocol (its shots, its full test sets), never ours: the report
shows them as separate rows labelled "paper, at paper scale", and they enter no average, no
difference and no figure. A cell the paper reports but that we could not source from a text
we could read is left out (``UNSOURCED`` says which), never filled from memory.
"""

from __future__ import annotations

import dataclasses

PAPER = 'Shen et al. 2023, "Mixture-of-Experts Meets Instruction Tuning" (arXiv 2305.14705)'
ROW_SUFFIX = " (paper, at paper scale)"


@dataclasses.dataclass(frozen=True)
class PaperNumber:
    """One published cell: ``model`` as the paper names it, our ``column`` name, the value in
    percent, the shots the paper used, the table it comes from and the text we read it in."""

    model: str
    column: str
    value: float
    shots: int
    table: str
    read_in: str
    experiments: tuple[str, ...] = ("setting2_instruction_tuning",)


NUMBERS: tuple[PaperNumber, ...] = (
    PaperNumber(
        model="Flan-ST32B",
        column="MMLU-Direct",
        value=65.4,
        shots=5,
        table="Table 1",
        read_in=(
            "a secondary summary of arXiv 2305.14705v2 (the argminai arXiv dashboard), which "
            "quotes FLAN-ST32B at 65.4% MMLU few-shot and 32.1 GFLOPs/token; the PDF's table "
            "itself was not available to check"
        ),
    ),
)

#: What the paper reports that is not in ``NUMBERS``, and why (shown under the tables).
UNSOURCED = (
    "Every other cell of the paper's tables (its Base-size rows, MMLU-CoT, BBH-Direct/CoT, "
    "the ablation tables) is left out: no copy of the table text could be read in this "
    "project's sources, and numbers are never typed in from memory."
)


def rows_for(experiment: str, *, shots: int, columns: tuple[str, ...]) -> dict[str, dict]:
    """{row label: {column: PaperNumber}} of an experiment's few-shot table; the paper reports
    few-shot held-out numbers only, so zero-shot tables (``shots == 0``) get none."""
    if shots == 0:
        return {}
    by_model: dict[str, dict] = {}
    for number in NUMBERS:
        if experiment in number.experiments and number.column in columns:
            by_model.setdefault(number.model, {})[number.column] = number
    return {row_label(model, cells): cells for model, cells in by_model.items()}


def row_label(model: str, cells: dict) -> str:
    """ "Flan-ST32B (paper, at paper scale; Table 1: MMLU-Direct 5-shot)"."""
    where = "; ".join(sorted({f"{n.table}: {n.column} {n.shots}-shot" for n in cells.values()}))
    return f"{model}{ROW_SUFFIX[:-1]}; {where})"


NONE_SOURCED = (
    "The paper's own numbers: none shown for this table, as none of its cells is among the "
    "ones we could source (flan_moe/experiments/paper_numbers.py). "
)


def note(rows: dict[str, dict]) -> str:
    """The sentence under a table: what the paper rows are, or that there are none."""
    if not rows:
        return NONE_SOURCED + UNSOURCED
    cites = sorted(
        {f"{n.model} {n.column} = {n.value:.1f} ({n.shots}-shot, {n.table}; read in {n.read_in})"
         for cells in rows.values() for n in cells.values()}
    )  # fmt: skip
    return (
        f"Rows marked '{ROW_SUFFIX.strip(' ()')}' are published numbers from {PAPER}: "
        + "; ".join(cites)
        + ". They are the paper's models at the paper's scale, shots and test sets, not our "
        "measurements, and enter no average or difference. " + UNSOURCED
    )
