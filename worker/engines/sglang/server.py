"""An SGLang server the worker starts and supervises as its child process.

The child runs in its own session: a Ctrl-C or SIGTERM meant for the worker must not reach SGLang
(and its scheduler processes) directly, because the worker still needs it to finish the jobs in
flight. The worker stops it last, as a whole process group, so no GPU process outlives it; and if
the worker itself is killed, the kernel kills the server too (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Sequence

log = logging.getLogger("sluice.worker.sglang")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: be killed when the worker dies, however it dies (a worker killed
    with SIGKILL must not leave SGLang holding the GPU). Linux only; elsewhere a no-op."""
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def launch_command(model: str, host: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """``python -m sglang.launch_server`` for ``model``; ``extra`` flags pass through unchanged
    and, given twice, win over these (argparse keeps the last).

    Streamed chunks carry only their new text (``--incremental-streaming-output``): by default
    each carries the whole answer so far, which SGLang encodes and the worker decodes again for
    every token, bytes that grow with the square of the answer's length. The engine reads
    either (it asks the server which), so a server started elsewhere may stream both ways."""
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
        "--incremental-streaming-output",
        *extra,
    ]


class SGLangServer:
    def __init__(self, command: Sequence[str]) -> None:
        self.command = list(command)
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        log.info("starting SGLang: %s", " ".join(self.command))
        self._process = await asyncio.create_subprocess_exec(
            *self.command, start_new_session=True, preexec_fn=_die_with_parent
        )

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
