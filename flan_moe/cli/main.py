"""`make run`: the tiny version of the paper's setting 2, end to end on CPU.

Instruction-tunes a tiny Flan-Switch and a tiny dense Flan-T5 of equal active compute
on the local FLAN mix, evaluates both (and their untuned initial weights) on
subsampled MMLU and BBH, zero- and few-shot, direct and chain-of-thought, then prints
the results table and the report's path. Same as
``python scripts/run_experiment.py setting2 --scale tiny``; re-running skips what is
finished.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from flan_moe.cli import experiment


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    return experiment.main(["setting2_instruction_tuning", "--scale", "tiny", *args])


if __name__ == "__main__":
    sys.exit(main())
