"""Routes of the OpenAI-compatible API, mounted at ``/v1`` and at Cloudflare's ``…/ai/v1``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.response import Stream

from gateway.decode import decode_json, read_body
from gateway.generation import Generations, new_request_id
from gateway.openai.protocol import ChatCompletion, ChatCompletionRequest, Model, ModelList, ServedBy
from gateway.openai.serving import chat_json, chat_stream
from gateway.openai.translate import to_native
from gateway.sse import HEADERS
from gateway.streaming import first_delta
from sluice.config import ServedModel, Settings

#: Fixed so that listing models is stable across restarts and replicas.
_CREATED = 1721692800  # 2024-07-23, the Llama 3.1 release


def model_card(served: ServedModel) -> Model:
    return Model(
        id=served.name,
        created=_CREATED,
        owned_by="sluice",
        served_by=ServedBy(engine=served.engine, model=served.model, description=served.description),
    )


class OpenAIController(Controller):
    tags = ("OpenAI",)

    @post("/chat/completions", status_code=200, summary="Create a chat completion")
    async def chat_completions(
        self, request: Request[Any, Any, Any], settings: Settings, generations: Generations
    ) -> Response[ChatCompletion] | Stream:
        body = decode_json(await read_body(request, settings.max_body_bytes), ChatCompletionRequest)
        native = to_native(body)
        request_id = new_request_id()
        handle = await generations.start(body.model, native, request_id)
        headers = {"x-request-id": request_id}
        if not body.stream:
            return Response(await chat_json(handle, body.model), headers=headers)
        first, rest = await first_delta(handle)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = chat_stream(handle, body.model, first, rest, include_usage=include_usage)
        return Stream(stream, media_type="text/event-stream", headers={**HEADERS, **headers})

    @get("/models", summary="List the served models")
    async def list_models(self, settings: Settings) -> ModelList:
        return ModelList(data=[model_card(served) for served in settings.models])

    @get("/models/{model:path}", summary="Describe one served model")
    async def get_model(self, model: str, settings: Settings) -> Model:
        return model_card(settings.served(model.lstrip("/")))
