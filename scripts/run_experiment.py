"""Run a Flan-MoE setting or ablation: ``python scripts/run_experiment.py setting2 --scale tiny``.

See ``flan_moe/cli/experiment.py`` (``--list`` shows every experiment and scale).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flan_moe.cli.experiment import main

if __name__ == "__main__":
    sys.exit(main())
