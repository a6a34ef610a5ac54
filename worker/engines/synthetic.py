"""The synthetic engine, for load tests only: tokens at a set rate after a set delay, no model.

It lets the gateway, Redis and the relay be loaded far past what a CPU model produces, so their
own cost can be measured (``benchmarks/``). Never a default: a served model must name it.
"""

from __future__ import annotations

import asyncio
import itertools

from sluice.config import ServedModel
from sluice.contract import Delta, Done, FinishReason, Usage
from sluice.errors import SluiceError, check_context_window
from worker.engines.base import EngineRequest, Generation

_WORDS = ["", "The", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog."][1:]


def prompt_tokens(request: EngineRequest) -> int:
    """About one token per word: this engine has no tokenizer, and needs none."""
    if request.messages is None:
        return len((request.input.prompt or "").split())
    return sum(len(m["content"].split()) + 4 for m in request.messages)


class SyntheticEngine:
    name = "synthetic"
    default_concurrency = 16

    def __init__(self, served: ServedModel, *, tokens_per_second: float, first_token_delay: float) -> None:
        self.served = served
        self._interval = 1.0 / tokens_per_second
        self._delay = first_token_delay
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        return None

    async def until_failed(self) -> str:
        never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        return await never

    def tokenizer_json(self) -> str | None:
        return None

    def loaded_adapters(self) -> list[str]:
        return []  # made-up tokens: an adapter would change nothing worth measuring

    def submit(self, request_id: str, request: EngineRequest) -> Generation:
        task: asyncio.Task[None]
        generation = Generation(cancel=lambda: self._cancel(task))
        task = asyncio.create_task(self._run(request, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return generation

    @staticmethod
    def _cancel(task: asyncio.Task[None]) -> None:
        task.cancel()

    async def _run(self, request: EngineRequest, generation: Generation) -> None:
        prompt = prompt_tokens(request)
        try:
            check_context_window(prompt, request.input.max_tokens, self.served.context_window)
        except SluiceError as error:
            generation.outputs.put_nowait(error)
            return
        await asyncio.sleep(self._delay)
        if request.json_schema is not None:  # the smallest JSON an object schema might accept
            generation.outputs.put_nowait(Delta(text="{}", tokens=1))
            self._done(generation, prompt, 1, "stop")
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        words = itertools.cycle(_WORDS)
        for n in range(request.input.max_tokens):
            generation.outputs.put_nowait(Delta(text=f" {next(words)}", tokens=1))
            # Paced against the start, not the last token: the rate holds under a loaded loop.
            await asyncio.sleep(max(0.0, start + (n + 1) * self._interval - loop.time()))
        self._done(generation, prompt, request.input.max_tokens, "length")

    @staticmethod
    def _done(generation: Generation, prompt: int, completion: int, reason: FinishReason) -> None:
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        generation.outputs.put_nowait(Done(finish_reason=reason, usage=usage))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
