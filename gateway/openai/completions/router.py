"""``POST /completions``, mounted at ``/v1`` and at Cloudflare's ``…/ai/v1``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, post
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from gateway.caller import caller_of
from gateway.decode import StreamingOperation, strict
from gateway.errors import OPENAI_ERRORS
from gateway.generation import Generations
from gateway.metrics import label_model, request_id_of
from gateway.openai.completions.protocol import CompletionRequest, TextCompletion
from gateway.openai.completions.serving import completion_json, completion_stream
from gateway.openai.completions.translate import to_native
from gateway.routing import SESSION_HEADER
from gateway.sse import EventStream


class CompletionsController(Controller):
    tags = ("OpenAI",)

    @post(
        "/completions",
        status_code=200,
        summary="Create a completion (legacy)",
        description="The prompt is sent verbatim, without the chat template.",
        operation_class=StreamingOperation,
        responses=OPENAI_ERRORS,
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: SkipValidation[CompletionRequest],
        generations: NamedDependency[Generations],
    ) -> Response[TextCompletion]:
        payload = strict(data, CompletionRequest)
        native = to_native(payload)
        request_id = request_id_of(request)
        session = request.headers.get(SESSION_HEADER)
        handle = await generations.start(
            payload.model, native, request_id, caller=caller_of(request), session=session
        )
        label_model(request, handle.job.model)  # the base model: adapters would be unbounded
        if not payload.stream:
            return Response(await completion_json(handle, request.receive, payload.model))
        # Returned while the job waits: it answers once the first output (or error) is known.
        stream = completion_stream(handle, payload.model, include_usage=payload.include_usage)
        return EventStream(stream)  # type: ignore[return-value]
