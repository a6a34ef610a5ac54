"""The engine-agnostic half of running a request: what the model reads, and what it may write.

A native input becomes an :class:`EngineRequest`: chat messages with the tools rendered the way
Llama 3.1 takes them (or the raw prompt), and the decoding constraint that JSON mode or a forced
tool call needs. Every engine then only renders, samples and constrains.
"""

from __future__ import annotations

from typing import Any

from sluice.contract import GenerationInput, JsonObject, Message
from sluice.errors import bad_input
from worker.engines.base import AdapterFiles, EngineRequest
from worker.tools import to_chat, tool_call_schema

#: JSON mode without a schema: any JSON object.
ANY_OBJECT: JsonObject = {"type": "object"}


def constraint(request: GenerationInput) -> JsonObject | None:
    forced = tool_call_schema(request.tools_offered, request.tool_choice)
    if forced is not None and request.wants_json:
        raise bad_input("response_format: JSON mode cannot be combined with a forced tool call")
    if forced is not None:
        return forced
    if request.response_format is not None and request.wants_json:
        schema: JsonObject = request.response_format.json_schema or ANY_OBJECT
        return schema
    return None


def prepare(request: GenerationInput, adapter: AdapterFiles | None = None) -> EngineRequest:
    if request.raw and request.prompt is not None:
        return EngineRequest(request, messages=None, json_schema=constraint(request), adapter=adapter)
    conversation = request.messages or [Message(role="user", content=request.prompt)]
    messages = to_chat(conversation, request.tools_offered)
    return EngineRequest(request, messages=messages, json_schema=constraint(request), adapter=adapter)


def prompt_ids(tokenizer: Any, request: EngineRequest) -> list[int]:
    """The token ids the model reads: its own chat template over the messages (with the
    generation prompt), or the raw prompt as is. ``tokenizer`` is a transformers tokenizer."""
    if request.messages is None:
        ids: list[int] = tokenizer.encode(request.input.prompt or "", add_special_tokens=False)
        return ids
    encoded = tokenizer.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=True)
    # transformers 5 returns a BatchEncoding here, earlier versions a plain list.
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    return list(ids)
