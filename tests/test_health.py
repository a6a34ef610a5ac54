"""Probes as an orchestrator sees them: a gateway with no live worker (all still loading, say)
stays ready, reports that it has none, and answers requests with Sluice's own errors rather than
leaving its Service so that clients are refused a connection."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import httpx
import pytest

from sluice.contract import queue_key
from sluice.redis_server import EmbeddedRedis, free_port
from tests.conftest import MODEL, start, stop, wait_for_http


@pytest.fixture(scope="module")
def lone_gateway(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    logs = tmp_path_factory.mktemp("health-logs")
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_server.url.rsplit("/", 1)[0] + "/11", "SLUICE_PORT": str(port)}
    env |= {"SLUICE_AUTH": "open"}
    env["SLUICE_MODELS"] = json.dumps([{"name": MODEL, "engine": "synthetic", "model": "synthetic"}])
    gateway = start("gateway", env, logs / "gateway.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", gateway)
        yield url
    finally:
        stop(gateway)


def test_a_gateway_without_workers_is_ready_and_says_it_has_none(lone_gateway: str) -> None:
    ready = httpx.get(f"{lone_gateway}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "no workers", "redis": True, "workers": 0}
    body = {"prompt": "Hi", "options": {"rejectIfBusy": True}}
    busy = httpx.post(f"{lone_gateway}/client/v4/accounts/acct/ai/run/{MODEL}", json=body, timeout=10)
    assert busy.status_code == 429, "no worker slot is free: said at once, in the API's envelope"
    assert busy.json()["errors"][0]["code"] == 3040


def test_a_served_queue_without_workers_is_still_measured(lone_gateway: str) -> None:
    """An autoscaler starting the first worker needs the queue's depth before any worker exists."""
    scrape = httpx.get(f"{lone_gateway}/metrics", timeout=10).text
    queue = queue_key(MODEL)
    for gauge in ("sluice_queue_depth", "sluice_live_workers", "sluice_worker_slots"):
        assert f'{gauge}{{queue="{queue}"}} 0.0' in scrape
