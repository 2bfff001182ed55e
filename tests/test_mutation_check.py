"""The mutation check (experiments/mutation_check.py): every named one-line bug makes its guarding tests fail."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "mutation_check.py"


@pytest.mark.slow
def test_every_mutant_is_killed(tmp_path):
    report_path = tmp_path / "mutation_check.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--json", str(report_path)], capture_output=True, text=True,
                            timeout=3600)
    report = json.loads(report_path.read_text())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report["baseline"]["passed"] and report["not_killed"] == []
    assert report["killed"] == report["mutants"] == len(report["outcomes"]) >= 20
    assert all(o["status"] == "killed" and o["tests_run"] >= 1 for o in report["outcomes"])
