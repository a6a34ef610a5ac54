"""The Prometheus config, rules and dashboard against a real Prometheus scraping a live Sluice.

Needs Debian's ``prometheus`` package (``prometheus`` and ``promtool`` on PATH); without it these
tests are skipped, and say so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from sluice.redis_server import free_port
from tests.conftest import MODEL, Stack

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
RULES = DEPLOY / "prometheus" / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sluice.json"

needs_prometheus = pytest.mark.skipif(
    shutil.which("promtool") is None or shutil.which("prometheus") is None,
    reason="Prometheus is not installed (apt-get install prometheus); skipped",
)


def rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel.get("targets", [])]


@needs_prometheus
def test_config_and_rules_pass_promtool() -> None:
    for args in (
        ["check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        ["check", "rules", str(RULES)],
    ):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus(stack: Stack, tmp_path: Path) -> Iterator[str]:
    gateway = stack.url.removeprefix("http://")
    worker = stack.worker_metrics_url.removeprefix("http://").removesuffix("/metrics")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "sluice-gateway", "static_configs": [{"targets": [gateway]}]},
            {"job_name": "sluice-worker", "static_configs": [{"targets": [worker]}]},
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "prometheus exited"
            assert time.monotonic() < deadline, "prometheus not ready"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(20)


def query(url: str, expr: str) -> dict[str, Any]:
    answer: dict[str, Any] = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    return answer


def wait_for(url: str, expr: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not query(url, expr).get("data", {}).get("result"):
        assert time.monotonic() < deadline, f"no series for {expr}"
        time.sleep(0.5)


@needs_prometheus
def test_every_expression_evaluates_against_a_live_scrape(stack: Stack, prometheus: str) -> None:
    run = f"{stack.url}/client/v4/accounts/acct/ai/run/{MODEL}"
    wait_for(prometheus, 'up{job="sluice-worker"} == 1')
    wait_for(prometheus, 'up{job="sluice-gateway"} == 1')
    for _ in range(3):  # traffic across two scrapes, so rate() has two samples to work with
        assert httpx.post(run, json={"prompt": "Say hi.", "max_tokens": 2}, timeout=60).status_code == 200
        time.sleep(1.2)
    wait_for(prometheus, "sluice:completion_tokens:rate5m > 0")
    for expr in dashboard_expressions() + [rule["expr"] for rule in rules() if "record" in rule]:
        answer = query(prometheus, expr)
        assert answer["status"] == "success", (expr, answer)
        assert answer["data"]["result"], f"no series: {expr}"
    for rule in rules():
        if "alert" in rule:  # quiet while healthy, but must evaluate
            assert query(prometheus, rule["expr"])["status"] == "success", rule["alert"]
