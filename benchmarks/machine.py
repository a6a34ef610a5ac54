"""What the machine itself costs, measured in the same run as the scenarios.

Two figures put the others in proportion across machines: how fast CPython runs plain code, and
what one round trip between two processes over loopback TCP costs (two wake-ups, which every
Redis command and every streamed frame pays). The second varies far more between machines than
the first: on a virtual machine whose cross-CPU wake-ups trap to the hypervisor it can be ten
times a bare-metal host's, and the gateway's CPU per request scales with it.
"""

from __future__ import annotations

import multiprocessing
import platform
import socket
import time
from typing import Any

ROUND_TRIPS = 2000


def cpu_ticks() -> tuple[int, int]:
    """The whole machine's CPU ticks so far, busy and in all (``/proc/stat``): how saturated the
    cores were during a measurement, load generator included."""
    with open("/proc/stat") as stat:
        fields = [int(f) for f in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields) - idle, sum(fields)


def _loop_ns() -> float:
    """Nanoseconds per iteration of a plain CPython loop (best of three)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _echo(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as peer:
        peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while data := peer.recv(64):
            peer.sendall(data)


def _round_trip_us() -> float:
    """Microseconds per 1-byte ping-pong with another process over loopback TCP (median of 5)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        echo = multiprocessing.get_context("spawn").Process(target=_echo, args=(server.getsockname()[1],))
        echo.start()
        peer, _ = server.accept()
        with peer:
            peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rounds = []
            for _ in range(5):
                start = time.perf_counter()
                for _ in range(ROUND_TRIPS // 5):
                    peer.sendall(b"x")
                    peer.recv(64)
                rounds.append((time.perf_counter() - start) / (ROUND_TRIPS // 5) * 1e6)
        echo.join(5)
    return sorted(rounds)[2]


def describe() -> dict[str, Any]:
    cores = len(__import__("os").sched_getaffinity(0))
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": cores,
        "python": platform.python_version(),
        "python_loop_ns": round(_loop_ns(), 1),
        "loopback_round_trip_us": round(_round_trip_us(), 1),
    }


def summary(facts: dict[str, Any]) -> str:
    return (
        f"{facts['cpu']}, {facts['cores']} cores, Python {facts['python']}; "
        f"{facts['python_loop_ns']} ns per plain loop iteration, "
        f"{facts['loopback_round_trip_us']} µs per loopback round trip between two processes"
    )
