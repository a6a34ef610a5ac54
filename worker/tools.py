"""Tool calling the way Llama 3.1 does it, for any engine: tools into the prompt, calls out of the text.

The rendering follows Llama 3.1's own chat template for JSON ("custom") tool calling with its
default ``tools_in_user_message``: the tool definitions and instructions go in front of the first
user turn, an assistant call is the JSON ``{"name", "parameters"}``, and a tool result is an
``ipython`` turn. Done on the messages rather than inside one template, so a model whose template
knows nothing of tools (the CPU stand-in) gets the same prompt text.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from typing import Any

from sluice.contract import Function, JsonObject, Message, NamedToolChoice, ToolCall, ToolCallIn, ToolChoice
from sluice.errors import bad_input

#: Llama 3.1's instructions for JSON tool calls, verbatim from its chat template.
INSTRUCTIONS = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
PYTHON_TAG = "<|python_tag|>"
_END_TAGS = ("<|eom_id|>", "<|eot_id|>")


def tool_block(tools: list[Function]) -> str:
    """The instructions and one indented JSON definition per tool, as the template writes them."""
    definitions = "".join(
        json.dumps(
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            },
            indent=4,
            ensure_ascii=False,
        )
        + "\n\n"
        for t in tools
    )
    return INSTRUCTIONS + definitions


def call_text(calls: list[ToolCallIn]) -> str:
    """An assistant turn that called tools, in the form the model itself writes calls."""

    def one(call: ToolCallIn) -> str:
        try:
            arguments: Any = json.loads(call.function.arguments or "{}")
        except ValueError:
            arguments = call.function.arguments
        return json.dumps({"name": call.function.name, "parameters": arguments}, ensure_ascii=False)

    # The template allows one call per turn; several are joined as Llama writes them (";").
    return "; ".join(one(call) for call in calls)


def chat_turn(message: Message) -> dict[str, str]:
    if message.tool_calls:
        return {"role": "assistant", "content": call_text(message.tool_calls)}
    if message.role in ("tool", "ipython"):
        return {"role": "ipython", "content": message.text()}
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text()}


def to_chat(messages: list[Message], tools: list[Function]) -> list[dict[str, str]]:
    """The conversation as ``{role, content}`` turns for a chat template, tools rendered in."""
    turns = [chat_turn(m) for m in messages]
    if not tools:
        return turns
    # The template puts the tools in front of the first turn after the system prompt.
    first = 1 if turns and turns[0]["role"] == "system" else 0
    if first == len(turns):
        turns.append({"role": "user", "content": ""})
    turn = turns[first]
    turns[first] = {"role": turn["role"], "content": tool_block(tools) + turn["content"].strip()}
    return turns


def _call_schema(tool: Function) -> JsonObject:
    parameters = tool.parameters if "type" in tool.parameters else {"type": "object", **tool.parameters}
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "parameters": parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def tool_call_schema(tools: list[Function], choice: ToolChoice | None) -> JsonObject | None:
    """The JSON Schema a forced tool call must match; ``None`` when the model may answer in text."""
    if choice == "required" and tools:
        alternatives = [_call_schema(t) for t in tools]
        return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    if isinstance(choice, NamedToolChoice):
        tool = next((t for t in tools if t.name == choice.function.name), None)
        if tool is None:
            raise bad_input(
                f"tool_choice: no tool named {choice.function.name!r} in tools", param="tool_choice"
            )
        return _call_schema(tool)
    return None


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{secrets.token_hex(16)}"


def _objects(text: str) -> list[Any] | None:
    """The JSON values ``text`` consists of: one value, a list, or values separated by ``;``."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ";"):
            position += 1
        if position == len(text):
            return values
        try:
            value, position = decoder.raw_decode(text, position)
        except ValueError:
            return None
        values.extend(value if isinstance(value, list) else [value])


def _call(value: Any, names: set[str], new_id: Callable[[], str]) -> ToolCall | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("parameters", value.get("arguments", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(id=new_id(), name=value["name"], arguments=arguments)


def parse_tool_calls(text: str, tools: list[Function], new_id: Callable[[], str]) -> list[ToolCall] | None:
    """Tool calls, if the whole output is calls to ``tools``; ``None`` if it is an answer in text."""
    body = text.strip()
    for tag in _END_TAGS:
        body = body.removesuffix(tag).rstrip()
    body = body.removeprefix(PYTHON_TAG).strip()
    values = _objects(body)
    if not values:
        return None
    names = {t.name for t in tools}
    calls = [_call(value, names, new_id) for value in values]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


_OPENING = re.compile(r"\s*")


def may_be_tool_call(prefix: str) -> bool:
    """Whether streamed text so far may still turn out to be a tool call (so it is held back)."""
    start = prefix[_OPENING.match(prefix).end() :]  # type: ignore[union-attr]
    if not start:
        return True
    return start[0] in "{[" or PYTHON_TAG.startswith(start) or start.startswith(PYTHON_TAG)
