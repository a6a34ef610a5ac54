"""The ``sglang`` engine: each generation is one streaming ``/generate`` request to SGLang.

The worker applies the model's chat template itself and sends token ids; SGLang's cumulative text
is turned back into deltas, stop strings are cut by :class:`StopText` (SGLang trims a matched stop
string only from its last chunk, after earlier chunks may have shown its start), and usage and the
finish reason come from ``meta_info``. A cancelled generation closes its stream and sends
``/abort_request`` at once, so the GPU stops generating for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from sluice.config import ServedModel, Settings
from sluice.contract import Delta, Done, FinishReason, Usage
from sluice.errors import ErrorCode, SluiceError, bad_input, check_context_window, internal, unavailable
from worker.engines.base import EngineFailed, EngineRequest, Generation, Output
from worker.engines.detokenize import StopText
from worker.engines.sglang.adapters import SGLangAdapters
from worker.engines.sglang.client import SGLangClient, SGLangRejected, SGLangUnavailable
from worker.engines.sglang.params import generate_request
from worker.engines.sglang.protocol import Chunk, Finish
from worker.engines.sglang.server import SGLangServer, launch_command
from worker.prompt import prompt_ids

log = logging.getLogger("sluice.worker.sglang")


@dataclass(frozen=True)
class SGLangOptions:
    """How the worker reaches SGLang: ``url`` of a server beside it, else one it starts on
    ``port``. The settings (``sluice/config.py``) hold what each means and its default."""

    url: str | None
    port: int
    server_args: tuple[str, ...]
    tokenizer: str | None
    ready_timeout: float
    #: Three failed health checks in a row mean SGLang is gone.
    probe_interval: float
    #: Seconds SGLang gets to stop before it is killed.
    stop_grace: float = 30.0

    @classmethod
    def of(cls, settings: Settings) -> SGLangOptions:
        return cls(
            url=settings.sglang_url or None,
            port=settings.sglang_port,
            server_args=settings.sglang_args,
            tokenizer=settings.tokenizer,
            ready_timeout=settings.sglang_ready_timeout,
            probe_interval=settings.engine_probe_interval,
        )


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    # Never a download at run time: the tokenizer sits beside the weights SGLang loaded.
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def aborted(finish: Finish) -> SluiceError:
    """SGLang ended a request itself: the request's fault (4xx) or the server's (retry)."""
    status = finish.status_code or 503
    if 400 <= status < 500:
        return bad_input(finish.message or "rejected by the engine")
    message = f"The engine aborted the generation: {finish.message or 'no reason given'}"
    return SluiceError(ErrorCode.ABORTED, 503, message, retryable=True)


class StreamReader:
    """One SGLang stream turned into engine outputs: text deltas with their token counts, then
    :class:`Done` or an error."""

    def __init__(self, stop: list[str] | None, *, incremental: bool) -> None:
        self.text = StopText(stop or ())
        self._incremental = incremental
        self._received = ""  # the server's cumulative text so far
        self._counted = 0  # completion tokens already accounted for
        self._unsent = 0  # tokens whose text is held back
        self.usage = Usage()
        self.ended = False
        #: SGLang ended the request itself (else it still runs after :attr:`ended`, see ``_run``).
        self.server_done = False

    def read(self, chunk: Chunk) -> list[Output]:
        if chunk.error is not None:
            self.ended = self.server_done = True
            return [bad_input(chunk.error.message or "rejected by the engine")]
        meta = chunk.meta_info
        if meta is None:
            return []
        self._unsent += max(0, meta.completion_tokens - self._counted)
        self._counted = max(self._counted, meta.completion_tokens)
        total = meta.prompt_tokens + meta.completion_tokens
        self.usage = Usage(meta.prompt_tokens, meta.completion_tokens, total)
        finish = meta.finish_reason
        self.server_done = finish is not None
        if finish is not None and finish.type == "abort":
            self.ended = True
            return [aborted(finish)]
        text = self.text.extend(self._piece(chunk.text))
        if finish is not None:
            matched = finish.matched if isinstance(finish.matched, str) else None
            return self._end(text + self.text.flush(matched), "length" if finish.type == "length" else "stop")
        if self.text.stopped:  # a stop string SGLang has not acted on yet
            return self._end(text, "stop")
        return [self._delta(text)] if text else []

    def _piece(self, text: str) -> str:
        if self._incremental:
            return text
        # Cumulative: the new part. The last chunk may be shorter (a matched stop string trimmed).
        piece = text[len(self._received) :] if text.startswith(self._received) else ""
        self._received = text
        return piece

    def _delta(self, text: str) -> Delta:
        delta = Delta(text=text, tokens=self._unsent)
        self._unsent = 0
        return delta

    def _end(self, text: str, reason: FinishReason) -> list[Output]:
        self.ended = True
        head: list[Output] = [self._delta(text)] if text or self._unsent else []
        return [*head, Done(finish_reason=reason, usage=self.usage)]


class SGLangEngine:
    name = "sglang"
    #: SGLang batches hundreds of requests; arq's default of 10 jobs would starve it.
    default_concurrency = 256

    def __init__(
        self, served: ServedModel, options: SGLangOptions, *, max_streams: int, max_adapters: int = 8
    ) -> None:
        self.served = served
        self.options = options
        self._server: SGLangServer | None = None
        if options.url is None:
            command = launch_command(served.model, "127.0.0.1", options.port, options.server_args)
            self._server = SGLangServer(command)
        self.url = options.url or f"http://127.0.0.1:{options.port}"
        self._client = SGLangClient(self.url, max_streams=max_streams)
        self.adapters = SGLangAdapters(self._client, max_adapters)
        self._tokenizer: Any = None
        self._incremental = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._failure: asyncio.Future[str] | None = None
        self._watchers: list[asyncio.Task[None]] = []

    @property
    def client(self) -> SGLangClient:
        return self._client

    async def start(self) -> None:
        self._failure = asyncio.get_running_loop().create_future()
        if self._server is not None:
            await self._server.start()
            self._watchers.append(asyncio.create_task(self._watch_process(self._server)))
        await self._wait_ready()
        info = await self._client.server_info()
        self._incremental = info.incremental_streaming_output
        path = self.options.tokenizer or info.tokenizer_path or info.model_path
        self._tokenizer = await asyncio.to_thread(load_tokenizer, path)
        self._watchers.append(asyncio.create_task(self._watch_health()))
        log.info("SGLang %s at %s serves %s", info.version or "(version unknown)", self.url, info.model_path)

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.ready_timeout
        assert self._failure is not None
        while not await self._client.healthy():
            if self._failure.done():
                raise EngineFailed(self._failure.result())
            if loop.time() > deadline:
                raise EngineFailed(f"SGLang at {self.url} not ready within {self.options.ready_timeout:.0f}s")
            # Polling is all SGLang offers: it has no readiness event to wait on.
            await asyncio.wait({self._failure}, timeout=self.options.probe_interval)

    def _fail(self, reason: str) -> None:
        if self._failure is not None and not self._failure.done():
            log.error("engine failed: %s", reason)
            self._failure.set_result(reason)

    async def _watch_process(self, server: SGLangServer) -> None:
        status = await server.wait()
        self._fail(f"the SGLang server exited with status {status}")

    async def _watch_health(self) -> None:
        failures = 0
        while failures < 3:
            await asyncio.sleep(self.options.probe_interval)
            failures = 0 if await self._client.healthy() else failures + 1
        self._fail(f"SGLang at {self.url} failed {failures} health checks in a row")

    async def until_failed(self) -> str:
        assert self._failure is not None, "start() first"
        return await asyncio.shield(self._failure)

    def tokenizer_json(self) -> str | None:
        text: str = self._tokenizer.backend_tokenizer.to_str()
        return text

    def loaded_adapters(self) -> list[str]:
        return self.adapters.names

    def submit(self, request_id: str, request: EngineRequest) -> Generation:
        task: asyncio.Task[None]
        generation = Generation(cancel=lambda: self._cancel(request_id, task))
        task = asyncio.create_task(self._run(request_id, request, generation))
        self._keep(task)
        return generation

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)  # held until done: the event loop keeps only weak references
        task.add_done_callback(self._tasks.discard)

    def _cancel(self, rid: str, task: asyncio.Task[None]) -> None:
        if not task.done():
            task.cancel()
            self._keep(asyncio.create_task(self._client.abort(rid)))

    async def _run(self, rid: str, request: EngineRequest, generation: Generation) -> None:
        put = generation.outputs.put_nowait
        reader = StreamReader(request.input.stop, incremental=self._incremental)
        try:
            ids = prompt_ids(self._tokenizer, request)
            check_context_window(len(ids), request.input.max_tokens, self.served.context_window)
            async with contextlib.AsyncExitStack() as held:
                adapter = request.adapter
                lora = await held.enter_async_context(self.adapters.using(adapter)) if adapter else None
                body = generate_request(rid, ids, request, lora)
                chunks = await held.enter_async_context(contextlib.aclosing(self._client.generate(body)))
                async for chunk in chunks:
                    for output in reader.read(chunk):
                        put(output)
                    if reader.ended:
                        break
            if not reader.ended:
                put(internal("SGLang ended the stream without a finish reason"))
            elif not reader.server_done:  # ended on a stop string before SGLang noticed it
                self._keep(asyncio.create_task(self._client.abort(rid)))
        except SluiceError as error:
            put(error)
        except SGLangRejected as exc:
            put(bad_input(exc.message) if exc.status < 500 else unavailable(f"SGLang answered {exc}"))
        except SGLangUnavailable as exc:
            put(unavailable(f"The engine is unavailable: {exc}"))
        except Exception as exc:  # a bad frame, a template error: this request fails, not the worker
            log.exception("generation %s failed", rid)
            put(internal(type(exc).__name__))

    async def close(self) -> None:
        for task in [*self._watchers, *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._watchers, *self._tasks, return_exceptions=True)
        await self._client.aclose()
        if self._server is not None:
            await self._server.stop(self.options.stop_grace)
