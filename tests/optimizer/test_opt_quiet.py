"""HiGHS prints nothing to standard output: stdout carries sitectl's JSON log lines and the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# A fresh process, because HiGHS prints its banner only once per process.
SOLVE = """
from optimizer.lp import solve
from optimizer.reference import max_energy
from tests.optimizer.cases import car, one_circuit

print("before", flush=True)
problem = one_circuit([car("a"), car("b")])
allocation = solve(problem, budget_s=10.0)
max_energy(problem)
print("after", allocation.method, flush=True)
"""


def test_a_solve_prints_no_banner_and_leaves_stdout_working() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SOLVE], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    # Only our own lines, in order: no "Running HiGHS", and stdout is restored after the mute.
    assert result.stdout == "before\nafter lp\n"
    assert "HiGHS" not in result.stderr
