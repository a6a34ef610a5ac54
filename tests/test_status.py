"""`sluice status` shows queues, live workers and gateway traffic from a running deployment."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.conftest import MODEL, Stack


def status(redis_url: str, gateway_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluice", "status", "--redis-url", redis_url, "--gateway-url", gateway_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"COLUMNS": "200", "PATH": ""},
    )


def test_status_shows_queues_workers_and_traffic(stack: Stack) -> None:
    response = httpx.post(stack.native_url, json={"prompt": "Say hi.", "max_tokens": 2}, timeout=60)
    assert response.status_code == 200
    result = status(stack.redis_url, stack.url)
    assert result.returncode == 0, result.stderr
    for shown in ("Queues", MODEL, "Workers", "transformers", "adapters loaded", "status 200"):
        assert shown in result.stdout
    assert "(gone)" not in result.stdout  # no worker silent past its heartbeat


def test_status_says_when_the_gateway_is_unreachable(stack: Stack) -> None:
    result = status(stack.redis_url, "http://127.0.0.1:9")
    assert result.returncode == 0
    assert "gateway metrics unavailable" in result.stdout
