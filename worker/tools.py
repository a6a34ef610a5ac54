"""Tool calling the way Llama 3.1 does it, for any engine: tools into the prompt, calls out of the text.

The rendering follows the chat template in ``meta-llama/Llama-3.1-8B-Instruct``'s
``tokenizer_config.json`` for JSON ("custom") tool calling with its default
``tools_in_user_message``: the instructions and tool definitions go in front of the first turn after
the system prompt, an assistant call is the JSON ``{"name", "parameters"}``, and a tool result is an
``ipython`` turn. It is done on the messages rather than inside one template, so a model whose
template knows nothing of tools (the CPU stand-in) reads the same text.

What messages cannot carry: with tools, that template also writes ``Environment: ipython`` into the
system header, above the knowledge-cutoff lines; rendering :func:`to_chat`'s turns through it
without tools differs from rendering the original request with tools by exactly that line.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from typing import Any

from sluice.contract import Function, JsonObject, Message, NamedToolChoice, ToolCall, ToolCallIn, ToolChoice
from sluice.errors import bad_input

#: Llama 3.1's instructions for JSON tool calls, as its chat template writes them (no space before
#: "Do not use variables." — the template joins two literals; the model was tuned on that text).
INSTRUCTIONS = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)
PYTHON_TAG = "<|python_tag|>"
_END_TAGS = ("<|eom_id|>", "<|eot_id|>")

Turn = dict[str, str]


# --- Into the prompt ----------------------------------------------------------------------------


def tool_block(tools: list[Function]) -> str:
    """The instructions and one indented JSON definition per tool, as the template writes them."""
    return INSTRUCTIONS + "".join(_definition(tool) + "\n\n" for tool in tools)


def _definition(tool: Function) -> str:
    # ensure_ascii=False and insertion order: transformers' ``tojson`` filter, which the template uses.
    spec = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return json.dumps({"type": "function", "function": spec}, indent=4, ensure_ascii=False)


def _decoded_arguments(arguments: str) -> Any:
    """OpenAI clients send arguments as JSON text; the template writes them as a JSON value."""
    try:
        return json.loads(arguments or "{}")
    except (ValueError, RecursionError):  # not JSON (or absurdly nested): keep the text as a string
        return arguments


def call_text(calls: list[ToolCallIn]) -> str:
    """An assistant turn that called tools, written the way the model itself writes calls."""
    # The template allows one call per turn (it raises otherwise); several are joined with "; ",
    # the form parse_tool_calls (and vLLM's Llama parser) reads back, rather than failing the request.
    return "; ".join(
        json.dumps(
            {"name": call.function.name, "parameters": _decoded_arguments(call.function.arguments)},
            ensure_ascii=False,
        )
        for call in calls
    )


def chat_turn(message: Message) -> Turn:
    """One message as a plain ``{role, content}`` turn, tool traffic in Llama's own form."""
    if message.tool_calls:
        return {"role": "assistant", "content": call_text(message.tool_calls)}
    if message.role in ("tool", "ipython"):
        return {"role": "ipython", "content": message.text()}
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.text()}


def to_chat(messages: list[Message], tools: list[Function]) -> list[Turn]:
    """The conversation as ``{role, content}`` turns for a chat template, tools rendered in."""
    turns = [chat_turn(message) for message in messages]
    return _with_tools(turns, tools) if tools else turns


def _with_tools(turns: list[Turn], tools: list[Function]) -> list[Turn]:
    # The template takes the first turn after the system prompt, whatever its role, and writes it as
    # a user turn behind the tool block. It raises when there is no such turn; an empty question
    # after the tools is kinder to a request that is only a system prompt.
    first = 1 if turns and turns[0]["role"] == "system" else 0
    question = turns[first]["content"] if first < len(turns) else ""
    opened = {"role": "user", "content": tool_block(tools) + question.strip()}
    return [*turns[:first], opened, *turns[first + 1 :]]


# --- Forcing a call -----------------------------------------------------------------------------


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
    if isinstance(choice, NamedToolChoice):
        tool = next((t for t in tools if t.name == choice.function.name), None)
        if tool is None:
            raise bad_input(
                f"tool_choice: no tool named {choice.function.name!r} in tools", param="tool_choice"
            )
        return _call_schema(tool)
    if choice == "required" and tools:
        alternatives = [_call_schema(tool) for tool in tools]
        return alternatives[0] if len(alternatives) == 1 else {"anyOf": alternatives}
    return None


# --- Out of the text ----------------------------------------------------------------------------


def new_tool_call_id() -> str:
    """An id in the style vLLM and Workers AI give tool calls."""
    return f"chatcmpl-tool-{secrets.token_hex(16)}"


def _after_separator(text: str, position: int) -> int:
    # Between calls Llama writes "; " (vLLM's Llama parser splits on the same); newlines are tolerated.
    rest = text[position:].lstrip().removeprefix(";").lstrip()
    return len(text) - len(rest)


def _json_values(text: str) -> list[Any] | None:
    """The JSON values ``text`` consists of, lists flattened; ``None`` if anything else is in it."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position = 0
    while position < len(text):
        if values:
            position = _after_separator(text, position)
            if position == len(text):
                break
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):  # a degenerate "[[[[…" output must not fail the job
            return None
        values.extend(value if isinstance(value, list) else [value])
    return values


def _arguments(raw: Any) -> JsonObject | None:
    if raw is None:  # a call to a tool without parameters may leave them out
        return {}
    if isinstance(raw, str):  # some fine-tunes write arguments as OpenAI sends them: JSON text
        try:
            raw = json.loads(raw or "{}")
        except (ValueError, RecursionError):
            return None
    return raw if isinstance(raw, dict) else None


def _call(value: Any, names: set[str], new_id: Callable[[], str]) -> ToolCall | None:
    if not isinstance(value, dict):
        return None
    name = value.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    arguments = _arguments(value["parameters"] if "parameters" in value else value.get("arguments"))
    if arguments is None:
        return None
    return ToolCall(id=new_id(), name=name, arguments=arguments)


def _call_body(text: str) -> str:
    body = text.strip()
    for tag in _END_TAGS:
        body = body.removesuffix(tag).rstrip()
    return body.removeprefix(PYTHON_TAG).lstrip()


def parse_tool_calls(text: str, tools: list[Function], new_id: Callable[[], str]) -> list[ToolCall] | None:
    """Tool calls, if the whole output is calls to ``tools``; ``None`` if it is an answer in text.

    Builtin calls (``<|python_tag|>brave_search.call(query="…")``) are not JSON and so are text."""
    values = _json_values(_call_body(text))
    if not values:
        return None
    names = {tool.name for tool in tools}
    calls = [_call(value, names, new_id) for value in values]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def may_be_tool_call(prefix: str) -> bool:
    """Whether streamed text so far may still turn out to be a tool call (so it is held back).

    True for every prefix of any text :func:`parse_tool_calls` accepts."""
    start = prefix.lstrip()
    if start.startswith(PYTHON_TAG):
        start = start.removeprefix(PYTHON_TAG).lstrip()
    elif PYTHON_TAG.startswith(start):  # empty, or the tag not yet complete
        return True
    return not start or start[0] in "{["
