"""The small interface every engine implements, and the handle of one running generation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from sluice.config import ServedModel
from sluice.contract import Delta, Done, GenerationInput, JsonObject
from sluice.errors import SluiceError

Output = Delta | Done | SluiceError


class EngineFailed(Exception):
    """The engine cannot serve any more (or never could): the worker stops taking jobs."""


@dataclass(frozen=True)
class AdapterFiles:
    """A LoRA adapter to apply: its name on the engine (the finetune's id, unique) and its folder
    (PEFT's ``adapter_config.json`` and ``adapter_model.safetensors``)."""

    name: str
    path: Path


@dataclass(frozen=True)
class EngineRequest:
    """One request as an engine runs it, whatever API the client spoke.

    The worker has already done what is engine-agnostic: tools rendered into the chat
    (``worker/tools.py``) and the decoding constraint chosen (JSON mode, forced tool calls).
    """

    input: GenerationInput
    #: Chat messages for the model's own template; ``None`` sends ``input.prompt`` verbatim (raw).
    messages: list[dict[str, str]] | None
    #: Decode only JSON valid against this schema (``{"type": "object"}`` for plain JSON mode).
    json_schema: JsonObject | None = None
    #: Apply this LoRA adapter to the base model; ``None``: the base model alone.
    adapter: AdapterFiles | None = None


class Generation:
    """One request in flight on an engine.

    The engine puts :class:`Delta` outputs on :attr:`outputs`, then exactly one :class:`Done` or
    :class:`SluiceError`. :meth:`cancel` asks the engine to stop generating for it.
    """

    def __init__(self, cancel: Callable[[], None]) -> None:
        self.outputs: asyncio.Queue[Output] = asyncio.Queue()
        self._cancel = cancel
        self._task: asyncio.Task[None] | None = None

    def cancel(self) -> None:
        self._cancel()

    def keep(self, task: asyncio.Task[None]) -> None:
        """Hold a task that works for this generation (the event loop keeps only weak references)."""
        self._task = task

    async def next_batch(self) -> list[Output]:
        """Wait for one output, then take every output already waiting: the coalescing point."""
        batch = [await self.outputs.get()]
        while not self.outputs.empty():
            batch.append(self.outputs.get_nowait())
        return batch


class Engine(Protocol):
    """Runs one served model. ``start`` loads it; ``submit`` starts a generation at once."""

    name: str
    served: ServedModel
    #: Jobs one worker runs at once unless configured: what keeps this engine's batch full.
    default_concurrency: int

    async def start(self) -> None:
        """Load the model (or reach the server that has it); :class:`EngineFailed` if impossible."""
        ...

    async def until_failed(self) -> str:
        """Return only when the engine can no longer serve, with the reason (an engine that
        runs in-process fails with its worker, and never returns)."""
        ...

    def tokenizer_json(self) -> str | None:
        """The model's tokenizer as ``tokenizer.json`` text, published for the gateway's token
        counts; ``None`` for an engine without one."""
        ...

    def loaded_adapters(self) -> list[str]:
        """The LoRA adapters (names) held loaded now, for the worker's advert: the gateway routes an
        adapter's requests to the worker that holds it."""
        ...

    def submit(self, request_id: str, request: EngineRequest) -> Generation: ...

    async def close(self) -> None: ...
