"""The operator's GPU smoke command runs end to end (here against the SGLang test double)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, SGLangDouble


def test_the_smoke_run_reports_throughput_per_concurrency(
    sglang_double: SGLangDouble, model_dir: Path, tmp_path: Path
) -> None:
    # Unscripted, the double answers a short sentence at once: this checks the harness, not a GPU.
    command = [sys.executable, "-m", "benchmarks.sglang_smoke", "--model", str(model_dir)]
    command += ["--sglang-url", sglang_double.url, "--skip-tests", "--seconds", "1", "--concurrency", "1,4"]
    command += ["--out", str(tmp_path)]
    subprocess.run(command, cwd=REPO, check=True, timeout=120)
    result = json.loads((tmp_path / "sglang-smoke.json").read_text())
    rows = result["throughput"]
    assert [row["concurrency"] for row in rows] == [1, 4]
    assert all(row["requests"] > 0 and row["failed"] == 0 for row in rows)
    assert all(row["output_tokens_per_s"] > 0 for row in rows)
    assert "| concurrency |" in (tmp_path / "sglang-smoke.md").read_text()
