"""`sluice up` on a laptop: embedded Redis, a worker and the gateway; Ctrl-C stops all three."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from sluice.redis_server import free_port
from tests.conftest import MODEL, wait_until_ready


def test_up_serves_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SLUICE_AUTH")}
    env["SLUICE_PORT"] = str(port)
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen([sys.executable, "-m", "sluice", "up"], env=env, stdout=out, stderr=out)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_ready(url, [up])
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert reply.status_code == 200
        assert reply.json()["choices"][0]["message"]["content"]
        up.send_signal(signal.SIGINT)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    output = log.read_text()
    # The banner says plainly what answers under the Llama name.
    assert "SmolLM2" in output
    # A fresh deployment has no keys: it runs open (the request above had none), and says so.
    assert "*** OPEN: no API keys exist" in output
    assert "sluice up: stopped" in output
    match = re.search(r"embedded redis-server at redis://127\.0\.0\.1:(\d+)", output)
    assert match, output
    for stopped_port in (int(match.group(1)), port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", stopped_port)) != 0, f"port {stopped_port} still open"
