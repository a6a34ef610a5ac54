"""A typed async client for the SGLang server's native HTTP API (``protocol`` has the types)."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgspec

from worker.engines.sglang.protocol import Chunk, GenerateRequest, LoRAUpdate, ServerInfo

log = logging.getLogger("sluice.worker.sglang")

_chunk = msgspec.json.Decoder(Chunk)
_encode = msgspec.json.Encoder().encode
_JSON = {"content-type": "application/json"}
#: SGLang's own health check waits up to 20 s for its one-token generation.
HEALTH_TIMEOUT = 20.0
#: A LoRA load reads the adapter from disk and waits its turn behind SGLang's one lock for all
#: loads and unloads (an unload waits for the adapter's requests to end).
LORA_TIMEOUT = 120.0


class SGLangUnavailable(Exception):
    """The server could not be reached, or broke a stream off."""


class SGLangRejected(Exception):
    """The server answered a request with an error status (4xx: the request's fault)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _message(body: bytes) -> str:
    """The error text, whichever of SGLang's shapes carries it."""
    try:
        data: Any = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body.decode(errors="replace")[:500]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        for key in ("message", "error_message", "detail"):
            if key in data:
                return str(data[key])
    return str(data)[:500]


class SGLangClient:
    def __init__(self, base_url: str, *, max_streams: int, timeout: float = 30.0) -> None:
        # One connection per stream in flight: httpx's default pool (100) would queue the rest.
        limits = httpx.Limits(max_connections=max_streams + 8, max_keepalive_connections=max_streams + 8)
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, limits=limits, timeout=timeout)

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[Chunk]:
        """The chunks of one streaming generation. Leaving the iteration (or cancelling the task
        reading it) closes the connection, which SGLang also takes as an abort."""
        # No read timeout: a queued request may wait long for its first token; a dead server is
        # noticed by the engine's health watch and by the connection dropping.
        timeout = httpx.Timeout(self._timeout, read=None)
        try:
            async with self._http.stream(
                "POST", "/generate", content=_encode(request), headers=_JSON, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    raise SGLangRejected(response.status_code, _message(await response.aread()))
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    yield _chunk.decode(data)
        except httpx.TransportError as exc:
            raise SGLangUnavailable(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        raise SGLangUnavailable("the stream ended without [DONE]")

    async def abort(self, rid: str) -> None:
        """Stop a request at once (closing its stream alone takes SGLang 2 s to act on)."""
        try:
            await self._http.post("/abort_request", content=_encode({"rid": rid}), headers=_JSON)
        except httpx.HTTPError as exc:
            log.debug("abort of %s not delivered: %s", rid, exc)

    async def healthy(self) -> bool:
        """SGLang's ``/health``: 200 once the model generates (it runs a one-token generation)."""
        try:
            response = await self._http.get("/health", timeout=HEALTH_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def server_info(self) -> ServerInfo:
        response = await self._http.get("/get_server_info")
        response.raise_for_status()
        return msgspec.json.decode(response.content, type=ServerInfo)

    async def load_lora_adapter(self, name: str, path: str, *, pinned: bool = False) -> LoRAUpdate:
        body = {"lora_name": name, "lora_path": path, "pinned": pinned}
        return await self._lora("/load_lora_adapter", body)

    async def unload_lora_adapter(self, name: str) -> LoRAUpdate:
        return await self._lora("/unload_lora_adapter", {"lora_name": name})

    async def _lora(self, route: str, body: dict[str, Any]) -> LoRAUpdate:
        try:
            response = await self._http.post(
                route, content=_encode(body), headers=_JSON, timeout=LORA_TIMEOUT
            )
        except httpx.HTTPError as exc:
            raise SGLangUnavailable(f"{route}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if response.status_code not in (200, 400):
            raise SGLangRejected(response.status_code, _message(response.content))
        return msgspec.json.decode(response.content, type=LoRAUpdate)

    async def aclose(self) -> None:
        await self._http.aclose()
