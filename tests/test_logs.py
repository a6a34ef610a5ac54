"""One JSON log line per request, its id echoed to the client and carried into the worker's lines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import Stack


def json_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for line in path.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def wait_for_line(path: Path, **fields: object) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        for line in json_lines(path):
            if all(line.get(k) == v for k, v in fields.items()):
                return line
        assert time.monotonic() < deadline, f"no log line with {fields} in {path.name}"
        time.sleep(0.05)


def test_request_id_runs_from_response_to_worker_log(stack: Stack) -> None:
    response = httpx.post(stack.native_url, json={"prompt": "Say hi.", "max_tokens": 2}, timeout=60)
    request_id = response.headers["x-request-id"]
    assert response.headers["cf-ai-req-id"] == request_id
    access = wait_for_line(stack.logs / "gateway.log", request_id=request_id, message="request")
    assert access["status"] == 200
    assert access["api"] == "workers_ai"
    assert access["duration_ms"] > 0
    job = wait_for_line(stack.logs / "worker.log", request_id=request_id, message="job ended")
    assert job["outcome"] == "completed"


def test_errors_are_logged_with_their_id_too(stack: Stack) -> None:
    response = httpx.post(stack.native_url, json={"prompt": ""}, timeout=60)
    assert response.status_code == 400
    line = wait_for_line(stack.logs / "gateway.log", request_id=response.headers["x-request-id"])
    assert line["status"] == 400
