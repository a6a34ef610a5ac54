"""Routes of the Workers AI API."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import FromPath, SkipValidation

from gateway.auth import authenticate
from gateway.caller import caller_of
from gateway.decode import StreamingOperation, strict
from gateway.errors import CLOUDFLARE_ERRORS
from gateway.generation import Generations
from gateway.metrics import label_model, request_id_of
from gateway.native.protocol import RunEnvelope, RunRequest
from gateway.native.serving import run_json, run_stream
from gateway.routing import SESSION_HEADER
from gateway.sse import EventStream


class NativeController(Controller):
    path = "/client/v4/accounts/{account_id:str}/ai"
    tags = ("Workers AI",)
    middleware = (authenticate,)

    @post(
        "/run/{model:path}",
        status_code=200,
        summary="Run a text-generation model",
        description="JSON by default; Server-Sent Events `{response}` frames with `stream: true`.",
        operation_class=StreamingOperation,
        responses=CLOUDFLARE_ERRORS,
    )
    async def run(
        self,
        model: FromPath[str],
        request: Request[Any, Any, Any],
        data: SkipValidation[RunRequest],
        generations: NamedDependency[Generations],
    ) -> Response[RunEnvelope]:
        payload = strict(data, RunRequest)
        # `path` parameters keep their leading slash; `%2F` arrives already decoded by the server.
        served = generations.served(model.lstrip("/"))
        request_id = request_id_of(request)
        busy_rejects = payload.options is not None and payload.options.reject_if_busy
        session = request.headers.get(SESSION_HEADER)
        handle = await generations.start(
            served.name,
            payload,
            request_id,
            caller=caller_of(request),
            reject_if_busy=busy_rejects,
            session=session,
        )
        label_model(request, served.name)
        # cf-ai-req-id is the header Workers AI clients read the request id from.
        headers = {"cf-ai-req-id": request_id}
        if not payload.stream:
            return Response(await run_json(handle, request.receive, payload), headers=headers)
        # Returned while the job waits: it answers once the first output (or error) is known.
        # Annotated as the JSON envelope for the OpenAPI document; streams are its other media type.
        return EventStream(run_stream(handle), headers)  # type: ignore[return-value]
