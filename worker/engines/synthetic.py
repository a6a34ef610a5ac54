"""The synthetic engine, for load tests only: tokens at a set rate after a set delay, no model.

It lets the gateway, Redis and the relay be loaded far past what a CPU model produces, so their
own cost can be measured (``benchmarks/``). Never a default: a served model must name it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field

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


@dataclass
class _Stream:
    generation: Generation
    prompt: int
    tokens: int
    left: int  # of the tokens, those still to emit
    words: Iterator[str] = field(default_factory=lambda: itertools.cycle(_WORDS))

    def emit(self) -> None:
        self.generation.outputs.put_nowait(Delta(text=f" {next(self.words)}", tokens=1))
        self.left -= 1


class SyntheticEngine:
    """Like a batching engine, one decode step emits a token to every running stream: one timer
    per step for all of them, not one per stream and token. A stream's first token comes
    ``first_token_delay`` after it is submitted; the rest come with the steps, one per
    ``1 / tokens_per_second``."""

    name = "synthetic"
    default_concurrency = 16

    def __init__(self, served: ServedModel, *, tokens_per_second: float, first_token_delay: float) -> None:
        self.served = served
        self._interval = 1.0 / tokens_per_second
        self._delay = first_token_delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[Generation, _Stream] = {}
        self._stepping: asyncio.Task[None] | None = None

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
        generation = Generation(cancel=lambda: self._cancel(generation, task))
        task = asyncio.create_task(self._prefill(request, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return generation

    def _cancel(self, generation: Generation, task: asyncio.Task[None]) -> None:
        task.cancel()
        self._running.pop(generation, None)

    async def _prefill(self, request: EngineRequest, generation: Generation) -> None:
        """Up to the first token; the steps emit the rest."""
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
        tokens = request.input.max_tokens
        stream = _Stream(generation, prompt, tokens, tokens)
        if stream.left > 0:
            stream.emit()
        if stream.left == 0:
            self._done(generation, prompt, tokens, "length")
            return
        self._running[generation] = stream
        if self._stepping is None or self._stepping.done():
            self._stepping = asyncio.create_task(self._steps())

    async def _steps(self) -> None:
        """A token to every running stream per step, while any runs. Paced against the first
        step, not the last: the rate holds under a loaded loop."""
        loop = asyncio.get_running_loop()
        start, step = loop.time(), 0
        while self._running:
            step += 1
            await asyncio.sleep(max(0.0, start + step * self._interval - loop.time()))
            for generation, stream in list(self._running.items()):
                stream.emit()
                if stream.left == 0:
                    del self._running[generation]
                    self._done(generation, stream.prompt, stream.tokens, "length")

    @staticmethod
    def _done(generation: Generation, prompt: int, completion: int, reason: FinishReason) -> None:
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        generation.outputs.put_nowait(Done(finish_reason=reason, usage=usage))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._stepping is not None:
            self._stepping.cancel()
        self._running.clear()
