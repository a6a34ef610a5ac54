"""A worker's Prometheus metrics, served on its own port (``SLUICE_WORKER_METRICS_PORT``).

What only a worker knows: how its jobs ended, how long they ran, how many it runs now, and its
engine's failures. Latency as users feel it is measured by the gateway.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("sluice.worker.metrics")

JOBS = Counter("sluice_worker_jobs", "Jobs ended, by outcome", ["model", "outcome"])
JOB_SECONDS = Histogram(
    "sluice_worker_job_duration_seconds",
    "Start to end of a job on this worker",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
RUNNING = Gauge("sluice_worker_running_jobs", "Jobs running now", ["model"])
TOKENS = Counter("sluice_worker_generated_tokens", "Tokens generated", ["model"])
ENGINE_ERRORS = Counter("sluice_engine_errors", "Jobs failed by the engine itself", ["engine"])
# Adapters are counted, never labelled by id: their number grows with tenants.
ADAPTERS_LOADED = Gauge("sluice_worker_adapters_loaded", "LoRA adapters held loaded now", ["engine"])
ADAPTER_LOADS = Counter("sluice_worker_adapter_loads", "LoRA adapters loaded on demand", ["engine"])
ADAPTER_EVICTIONS = Counter(
    "sluice_worker_adapter_evictions", "LoRA adapters unloaded to make room (least recently used)", ["engine"]
)


def adapters_seen(engine: str) -> None:
    """Start an engine's adapter series at zero, so dashboards show them before the first load."""
    ADAPTERS_LOADED.labels(engine).set(0)
    ADAPTER_LOADS.labels(engine)
    ADAPTER_EVICTIONS.labels(engine)


RECOVERED = Counter(
    "sluice_worker_recovered_jobs",
    "Jobs of killed workers this worker took over: requeued or failed (half-sent streams)",
    ["action"],
)


def serve_metrics(host: str, port: int) -> None:
    """Expose ``/metrics`` on ``port`` (0: not at all)."""
    if port == 0:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # a second worker on one host: it runs on, unscraped, and says so
        log.warning("metrics not served: port %d: %s", port, exc)
        return
    log.info("metrics at http://%s:%d/metrics", host, port)
