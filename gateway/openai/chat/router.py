"""``POST /chat/completions``, mounted at ``/v1`` and at Cloudflare's ``…/ai/v1``."""

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
from gateway.openai.chat.protocol import ChatCompletion, ChatCompletionRequest
from gateway.openai.chat.serving import chat_json, chat_stream
from gateway.openai.chat.translate import to_native
from gateway.routing import SESSION_HEADER
from gateway.sse import EventStream


class ChatController(Controller):
    tags = ("OpenAI",)

    @post(
        "/chat/completions",
        status_code=200,
        summary="Create a chat completion",
        description="A `chat.completion` object; `chat.completion.chunk` events with `stream: true`.",
        operation_class=StreamingOperation,
        responses=OPENAI_ERRORS,
    )
    async def create(
        self,
        request: Request[Any, Any, Any],
        data: SkipValidation[ChatCompletionRequest],
        generations: NamedDependency[Generations],
    ) -> Response[ChatCompletion]:
        payload = strict(data, ChatCompletionRequest)
        native = to_native(payload)
        request_id = request_id_of(request)
        session = request.headers.get(SESSION_HEADER)
        handle = await generations.start(
            payload.model, native, request_id, caller=caller_of(request), session=session
        )
        label_model(request, handle.job.model)  # the base model: adapters would be unbounded
        parallel = payload.parallel_tool_calls is not False
        if not payload.stream:
            return Response(await chat_json(handle, request.receive, payload.model, parallel=parallel))
        # Returned while the job waits: it answers once the first output (or error) is known.
        stream = chat_stream(handle, payload.model, include_usage=payload.include_usage, parallel=parallel)
        # Annotated as the JSON object for the OpenAPI document; streams are its other media type.
        return EventStream(stream)  # type: ignore[return-value]
