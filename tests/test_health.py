"""Probes as an orchestrator sees them: a gateway with no live worker (all still loading, say)
stays ready, reports that it has none, and answers requests with Sluice's own errors rather than
leaving its Service so that clients are refused a connection."""

from __future__ import annotations

import httpx

from sluice.contract import queue_key
from tests.conftest import MODEL, Stack


def test_a_gateway_without_workers_is_ready_and_says_it_has_none(lone_gateway: Stack) -> None:
    ready = httpx.get(f"{lone_gateway.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "no workers", "redis": True, "workers": 0}
    body = {"prompt": "Hi", "options": {"rejectIfBusy": True}}
    busy = httpx.post(lone_gateway.native_url, json=body, timeout=10)
    assert busy.status_code == 429, "no worker slot is free: said at once, in the API's envelope"
    assert busy.json()["errors"][0]["code"] == 3040


def test_a_served_queue_without_workers_is_still_measured(lone_gateway: Stack) -> None:
    """An autoscaler starting the first worker needs the queue's depth before any worker exists."""
    scrape = httpx.get(f"{lone_gateway.url}/metrics", timeout=10).text
    queue = queue_key(MODEL)
    for gauge in ("sluice_queue_depth", "sluice_live_workers", "sluice_worker_slots"):
        assert f'{gauge}{{queue="{queue}"}} 0.0' in scrape
