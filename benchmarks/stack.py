"""Redis, a gateway and workers as real processes on loopback, for one scenario."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sluice.cli import wait_ready
from sluice.config import DEFAULT_MODEL_NAME
from sluice.redis_server import EmbeddedRedis, free_port

MODEL = DEFAULT_MODEL_NAME
SYNTHETIC = [{"name": MODEL, "engine": "synthetic", "model": "synthetic"}]


@dataclass
class Stack:
    url: str
    redis_url: str
    gateway_pid: int
    worker_pids: list[int]

    @property
    def run_path(self) -> str:
        return f"/client/v4/accounts/bench/ai/run/{MODEL}"


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], timeout: float = 180) -> None:
    if not wait_ready(url, processes, timeout):
        raise RuntimeError(f"Sluice not ready at {url} in {timeout:.0f}s; see benchmarks/results/logs/")


@contextmanager
def running(
    logs: Path, *, workers: int = 1, synthetic: bool = True, ready_timeout: float = 180, **settings: str
) -> Iterator[Stack]:
    """One gateway process and ``workers`` worker processes; the synthetic engine by default."""
    logs.mkdir(parents=True, exist_ok=True)
    with EmbeddedRedis() as redis:
        port = free_port()
        env = {**os.environ, "REDIS_URL": redis.url, "SLUICE_PORT": str(port), "SLUICE_LOG_LEVEL": "warning"}
        env["SLUICE_WORKER_METRICS_PORT"] = "0"  # several workers share this host
        env.setdefault("SLUICE_AUTH", "open")  # the gateway's own cost, without keys
        if synthetic:
            env["SLUICE_MODELS"] = json.dumps(SYNTHETIC)
        env.update({f"SLUICE_{k.upper()}": v for k, v in settings.items()})
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for role, n in [("gateway", 1), ("worker", workers)]:
                for i in range(n):
                    with (logs / f"{role}-{i}.log").open("wb") as out:
                        command = [sys.executable, "-m", "sluice", role]
                        processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=out))
            url = f"http://127.0.0.1:{port}"
            _wait_ready(url, processes, ready_timeout)
            worker_pids = [p.pid for p in processes[1:]]
            yield Stack(url=url, redis_url=redis.url, gateway_pid=processes[0].pid, worker_pids=worker_pids)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()


@dataclass
class Floor:
    url: str
    pid: int


@contextmanager
def floor(logs: Path, ready_timeout: float = 60) -> Iterator[Floor]:
    """The gateway's HTTP server with nothing behind it (``benchmarks/floor.py``)."""
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    with (logs / "floor.log").open("wb") as out:
        command = [sys.executable, "-m", "benchmarks.floor", str(port)]
        process = subprocess.Popen(command, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + ready_timeout
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the floor server did not start; see {logs / 'floor.log'}")
            time.sleep(0.05)
        yield Floor(url=f"http://127.0.0.1:{port}", pid=process.pid)
    finally:
        process.terminate()
        process.wait(20)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _status_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory (VmHWM), in MiB."""
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS), in MiB."""
    return _status_mib(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks
