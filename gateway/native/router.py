"""Routes of the Workers AI API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.response import Stream

from gateway.decode import decode_json, read_body
from gateway.generation import Generations, new_request_id
from gateway.native.protocol import RunEnvelope
from gateway.native.serving import run_json, run_stream
from gateway.sse import HEADERS
from gateway.streaming import first_delta
from sluice.config import Settings
from sluice.contract import GenerationInput


class NativeController(Controller):
    path = "/client/v4/accounts/{account_id:str}/ai"
    tags = ("Workers AI",)

    @post("/run/{model:path}", status_code=200, summary="Run a text-generation model")
    async def run(
        self,
        request: Request[Any, Any, Any],
        model: str,
        settings: Settings,
        generations: Generations,
    ) -> Response[RunEnvelope] | Stream:
        # `path` parameters keep their leading slash; `%2F` arrives already decoded by the server.
        served = settings.served(model.lstrip("/"))
        body = decode_json(await read_body(request, settings.max_body_bytes), GenerationInput)
        request_id = new_request_id()
        handle = await generations.start(served.name, body, request_id)
        # cf-ai-req-id is the header Workers AI clients read the request id from.
        headers = {"cf-ai-req-id": request_id, "x-request-id": request_id}
        if not body.stream:
            return Response(await run_json(handle), headers=headers)
        first, rest = await first_delta(handle)
        stream = run_stream(handle, first, rest)
        return Stream(stream, media_type="text/event-stream", headers={**HEADERS, **headers})
