"""``sluice status``: queues, workers, traffic and errors at a glance, without Grafana.

Reads the worker registry and the queues from Redis, and one scrape of the gateway's /metrics.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import redis
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from sluice.config import Settings
from sluice.contract import WORKERS_KEY, decode_worker, queue_key, worker_key
from sluice.fairqueue import OLDEST_AMONG
from sluice.ids import earliest


@dataclass
class Traffic:
    """Totals since the gateway started, from one scrape."""

    by_status: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    rejections: dict[str, float] = field(default_factory=dict)
    aborts: dict[str, float] = field(default_factory=dict)
    in_flight: float = 0.0
    ttft_buckets: list[tuple[float, float]] = field(default_factory=list)

    def ttft(self, q: float) -> float:
        """A quantile of time to first token, read off the histogram's buckets (upper bound)."""
        buckets = sorted(self.ttft_buckets)
        total = buckets[-1][1] if buckets else 0
        for bound, count in buckets:
            if total and count >= q * total:
                return bound
        return math.nan


def scrape(url: str) -> Traffic:
    traffic = Traffic()
    ttft: dict[float, float] = defaultdict(float)
    with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "sluice_requests_total" and labels.get("api") != "other":
                traffic.by_status[labels["status"]] += sample.value
            elif sample.name == "sluice_rejections_total":
                traffic.rejections[labels["reason"]] = sample.value
            elif sample.name == "sluice_aborts_total":
                traffic.aborts[labels["cause"]] = sample.value
            elif sample.name == "sluice_in_flight_requests" and labels.get("api") != "other":
                traffic.in_flight += sample.value  # API requests only, not this very scrape
            elif sample.name == "sluice_time_to_first_token_seconds_bucket":
                ttft[float(labels["le"])] += sample.value
    traffic.ttft_buckets = list(ttft.items())
    return traffic


def _workers_table(client: redis.Redis, settings: Settings) -> Table:
    table = Table(title="Workers")
    for column in ("id", "model", "engine", "running / slots", "adapters loaded", "heartbeat", "up for"):
        table.add_column(column)
    now = time.time()
    # redis-py's sync and async clients share annotations (``Awaitable | Any``); these are sync.
    members = cast(list[tuple[bytes, float]], client.zrange(WORKERS_KEY, 0, -1, withscores=True))
    for raw_id, beat_ms in members:
        raw = cast(bytes | None, client.get(worker_key(raw_id.decode())))
        age = now - beat_ms / 1000
        if raw is None or age > settings.heartbeat_ttl:
            table.add_row(raw_id.decode(), "-", "-", "-", "-", f"[red]{age:.0f}s ago (gone)[/red]", "-")
            continue
        info = decode_worker(raw)
        uptime = f"{(now - info.started_at) / 60:.0f} min"
        load = f"{info.running} / {info.slots}" + (" (draining)" if info.draining else "")
        adapters = str(len(info.adapters))
        table.add_row(info.id, info.model, info.engine, load, adapters, f"{age:.1f}s ago", uptime)
    return table


def _queues_table(client: redis.Redis, settings: Settings) -> Table:
    table = Table(title="Queues")
    for column in ("model", "waiting", "oldest"):
        table.add_column(column)
    now = time.time()
    for served in settings.models:
        queue = queue_key(served.name)
        # Scores are fair-share tags, not arrivals; a request id tells its arrival.
        first = cast(list[bytes], client.zrange(queue, 0, OLDEST_AMONG - 1))
        arrived = earliest(first)
        oldest = f"{now - arrived:.1f}s" if arrived is not None else "-"
        table.add_row(served.name, str(client.zcard(queue)), oldest)
    return table


def _traffic_table(traffic: Traffic) -> Table:
    table = Table(title="Gateway (since it started)")
    table.add_column("")
    table.add_column("value")
    total = sum(traffic.by_status.values())
    errors = sum(v for status, v in traffic.by_status.items() if status.startswith("5"))
    table.add_row("requests", f"{total:.0f}")
    for status in sorted(traffic.by_status):
        table.add_row(f"  status {status}", f"{traffic.by_status[status]:.0f}")
    table.add_row("5xx ratio", f"{errors / total:.1%}" if total else "-")
    table.add_row("in flight", f"{traffic.in_flight:.0f}")
    table.add_row(
        "time to first token p50 / p99 (≤)", f"{traffic.ttft(0.5):.3f}s / {traffic.ttft(0.99):.3f}s"
    )
    for reason, count in sorted(traffic.rejections.items()):
        table.add_row(f"rejected: {reason}", f"{count:.0f}")
    for cause, count in sorted(traffic.aborts.items()):
        table.add_row(f"aborted: {cause}", f"{count:.0f}")
    return table


def show(settings: Settings, gateway_url: str, console: Console | None = None) -> int:
    console = console or Console()
    assert settings.redis_url is not None
    with redis.Redis.from_url(settings.redis_url) as client:
        console.print(_queues_table(client, settings))
        console.print(_workers_table(client, settings))
    try:
        console.print(_traffic_table(scrape(gateway_url)))
    except OSError as exc:
        console.print(f"[yellow]gateway metrics unavailable at {gateway_url}: {exc}[/yellow]")
    return 0
