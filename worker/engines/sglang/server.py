"""An SGLang server the worker starts and supervises as its child process.

The child runs in its own session: a Ctrl-C or SIGTERM meant for the worker must not reach SGLang
(and its scheduler processes) directly, because the worker still needs it to finish the jobs in
flight. The worker stops it last, as a whole process group, so no GPU process outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("sluice.worker.sglang")


def launch_command(model: str, host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """``python -m sglang.launch_server`` for ``model``; ``extra`` flags pass through unchanged
    and, given twice, win over these (argparse keeps the last)."""
    return [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        model,
        "--host",
        host,
        "--port",
        str(port),
        "--enable-metrics",
        *extra,
    ]


class SGLangServer:
    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log.info("starting SGLang: %s", " ".join(self.command))
        self._process = await asyncio.create_subprocess_exec(*self.command, start_new_session=True)

    @property
    def returncode(self) -> int | None:
        return None if self._process is None else self._process.returncode

    async def wait(self) -> int:
        """Until the server exits; its exit status."""
        assert self._process is not None
        return await self._process.wait()

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace`` seconds."""
        process = self._process
        if process is None or process.returncode is not None:
            return
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            log.warning("SGLang did not stop within %.0fs; killing it", grace)
            self._signal(signal.SIGKILL)
            await process.wait()

    def _signal(self, sig: signal.Signals) -> None:
        assert self._process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)
