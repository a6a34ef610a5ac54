"""Llama 3.1 tool calling, engine-agnostic: the prompt the model reads and the calls it writes."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import jsonschema
import pytest

from sluice.contract import (
    Function,
    FunctionCall,
    FunctionName,
    Message,
    NamedToolChoice,
    TextPart,
    ToolCallIn,
)
from sluice.errors import ErrorCode, SluiceError
from worker.tools import (
    may_be_tool_call,
    new_tool_call_id,
    parse_tool_calls,
    to_chat,
    tool_call_schema,
)

WEATHER = Function(
    name="get_weather",
    description="Weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
TIME = Function(
    name="get_time", description="The time — local", parameters={"type": "object", "properties": {}}
)
TOOLS = [WEATHER, TIME]
_ids = itertools.count()


def new_id() -> str:
    return f"id{next(_ids)}"


def call(name: str, arguments: str, id: str = "call_1") -> ToolCallIn:
    return ToolCallIn(id=id, function=FunctionCall(name=name, arguments=arguments))


# --- to_chat --------------------------------------------------------------------------------------


def test_tools_go_in_front_of_the_first_user_turn_exactly_as_llama_writes_them() -> None:
    turns = to_chat([Message("system", "Be brief."), Message("user", "  Weather in Paris?  ")], [WEATHER])
    assert turns[0] == {"role": "system", "content": "Be brief."}
    assert turns[1]["role"] == "user"
    assert turns[1]["content"] == (
        "Given the following functions, please respond with a JSON for a function call with its proper "
        "arguments that best answers the given prompt.\n"
        "\n"
        'Respond in the format {"name": function name, "parameters": dictionary of argument name and its '
        "value}.Do not use variables.\n"
        "\n"
        "{\n"
        '    "type": "function",\n'
        '    "function": {\n'
        '        "name": "get_weather",\n'
        '        "description": "Weather in a city",\n'
        '        "parameters": {\n'
        '            "type": "object",\n'
        '            "properties": {\n'
        '                "city": {\n'
        '                    "type": "string"\n'
        "                }\n"
        "            },\n"
        '            "required": [\n'
        '                "city"\n'
        "            ]\n"
        "        }\n"
        "    }\n"
        "}\n"
        "\n"
        "Weather in Paris?"
    )


def test_every_tool_is_listed_and_only_the_first_question_carries_them() -> None:
    turns = to_chat(
        [Message("user", "Weather?"), Message("assistant", "Where?"), Message("user", "Rome")], TOOLS
    )
    assert turns[0]["content"].count('"type": "function"') == 2
    assert turns[0]["content"].index('"get_weather"') < turns[0]["content"].index('"get_time"')
    assert turns[1:] == [{"role": "assistant", "content": "Where?"}, {"role": "user", "content": "Rome"}]


def test_a_tool_round_trip_renders_in_order_as_ipython() -> None:
    messages = [
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?"),
        Message("assistant", None, tool_calls=[call("get_weather", '{"city": "Paris"}')]),
        Message("tool", '{"temp": 21}', tool_call_id="call_1"),
        Message("assistant", "21 °C."),
    ]
    turns = to_chat(messages, [WEATHER])
    assert [t["role"] for t in turns] == ["system", "user", "assistant", "ipython", "assistant"]
    assert turns[1]["content"].endswith("\n\nWeather in Paris?")
    assert turns[2:] == [
        {"role": "assistant", "content": '{"name": "get_weather", "parameters": {"city": "Paris"}}'},
        {"role": "ipython", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "21 °C."},
    ]


def test_a_follow_up_without_tools_still_renders_the_tool_traffic() -> None:
    turns = to_chat(
        [
            Message("user", "Weather in Zürich?"),
            Message("assistant", "Checking.", tool_calls=[call("get_weather", '{"city": "Zürich"}')]),
            Message("ipython", [TextPart("text", '{"temp": '), TextPart("text", "3}")]),
        ],
        [],
    )
    assert turns == [
        {"role": "user", "content": "Weather in Zürich?"},
        # The content beside a call is dropped, as the template drops it; non-ASCII stays as is.
        {"role": "assistant", "content": '{"name": "get_weather", "parameters": {"city": "Zürich"}}'},
        {"role": "ipython", "content": '{"temp": 3}'},
    ]


def test_several_calls_in_one_turn_are_joined_the_way_they_are_parsed_back() -> None:
    calls = [call("get_time", "", "a"), call("get_weather", '{"city": "Rome"}', "b")]
    (turn,) = to_chat([Message("assistant", None, tool_calls=calls)], [])
    assert turn["content"] == (
        '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}'
    )
    parsed = parse_tool_calls(turn["content"], TOOLS, new_id) or []
    assert [(c.name, c.arguments) for c in parsed] == [("get_time", {}), ("get_weather", {"city": "Rome"})]


def test_arguments_that_are_not_json_are_kept_as_text() -> None:
    (turn,) = to_chat([Message("assistant", None, tool_calls=[call("get_weather", "Paris")])], [])
    assert turn["content"] == '{"name": "get_weather", "parameters": "Paris"}'
    deep = "[" * 100_000
    (turn,) = to_chat([Message("assistant", None, tool_calls=[call("get_weather", deep)])], [])
    assert json.loads(turn["content"])["parameters"] == deep


def test_roles_and_parts() -> None:
    turns = to_chat([Message("developer", [TextPart("text", "Be "), TextPart("text", "brief.")])], [])
    assert turns == [{"role": "system", "content": "Be brief."}]


def test_the_first_turn_after_the_system_prompt_becomes_the_user_turn_with_the_tools() -> None:
    # The template writes that turn under a user header whatever its role.
    turns = to_chat([Message("assistant", "Hello!"), Message("user", "Weather?")], [WEATHER])
    assert turns[0]["role"] == "user"
    assert turns[0]["content"].endswith("\n\nHello!")
    assert turns[1] == {"role": "user", "content": "Weather?"}


def test_tools_with_only_a_system_prompt_get_an_empty_question() -> None:
    turns = to_chat([Message("system", "Be brief.")], [WEATHER])
    assert [t["role"] for t in turns] == ["system", "user"]
    assert turns[1]["content"].startswith("Given the following functions")
    assert turns[1]["content"].endswith("}\n\n")


# --- parse_tool_calls -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
        '\n  {"name": "get_weather", "parameters": {"city": "Paris"}}  \n',
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        ' <|python_tag|> {"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>\n',
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
        '{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
        '{"name": "get_weather", "parameters": "{\\"city\\": \\"Paris\\"}"}',
        '{"type": "function", "name": "get_weather", "parameters": {"city": "Paris"}}',
        '[{"name": "get_weather", "parameters": {"city": "Paris"}}]',
        '<|python_tag|>[{"name": "get_weather", "parameters": {"city": "Paris"}}]<|eom_id|>',
    ],
)
def test_each_call_form_parses(text: str) -> None:
    (parsed,) = parse_tool_calls(text, TOOLS, new_id) or []
    assert (parsed.name, parsed.arguments) == ("get_weather", {"city": "Paris"})
    assert parsed.id


SEVERAL = [
    '{"name": "get_time", "parameters": {}}; {"name": "get_weather", "parameters": {"city": "Rome"}}',
    '{"name": "get_time", "parameters": {}};{"name": "get_weather", "parameters": {"city": "Rome"}};',
    '{"name": "get_time", "parameters": {}}\n{"name": "get_weather", "parameters": {"city": "Rome"}}',
    '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]',
]


@pytest.mark.parametrize("text", SEVERAL)
def test_several_calls_parse_in_order_with_their_own_ids(text: str) -> None:
    calls = parse_tool_calls(text, TOOLS, new_id) or []
    assert [(c.name, c.arguments) for c in calls] == [("get_time", {}), ("get_weather", {"city": "Rome"})]
    assert len({c.id for c in calls}) == 2


@pytest.mark.parametrize("text", ['{"name": "get_time"}', '{"name": "get_time", "parameters": null}'])
def test_a_call_without_parameters_has_empty_arguments(text: str) -> None:
    (parsed,) = parse_tool_calls(text, TOOLS, new_id) or []
    assert (parsed.name, parsed.arguments) == ("get_time", {})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "The weather in Paris is sunny.",
        '{"name": "launch_rockets", "parameters": {}}',
        '{"name": "get_time", "parameters": {}}; {"name": "launch_rockets", "parameters": {}}',
        '{"name": "get_weather", "parameters": {"city": "Par',
        '{"name": "get_weather", "parameters": {}} and some words',
        'Sure: {"name": "get_weather", "parameters": {}}',
        '{"city": "Paris"}',
        '{"name": {"nested": true}, "parameters": {}}',
        '{"name": ["get_time"], "parameters": {}}',
        '{"name": "get_weather", "parameters": ["Paris"]}',
        '{"name": "get_weather", "arguments": "Paris"}',
        '; {"name": "get_time", "parameters": {}}',
        "[]",
        "42",
        '"get_time"',
        '<|python_tag|>brave_search.call(query="weather in Paris")<|eom_id|>',
        "[" * 100_000,
        '{"a": ' * 100_000,
    ],
)
def test_anything_else_is_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS, new_id) is None


def test_no_tools_means_no_calls() -> None:
    assert parse_tool_calls('{"name": "get_time", "parameters": {}}', [], new_id) is None


def test_tool_call_ids() -> None:
    ids = {new_tool_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"chatcmpl-tool-[0-9a-f]{32}", i) for i in ids)


# --- may_be_tool_call -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "held"),
    [
        ("", True),
        ("  \n", True),
        ("{", True),
        ('{"na', True),
        ("\n [", True),
        ("<", True),
        ("<|pyth", True),
        ("<|python_tag|>", True),
        ("<|python_tag|>{", True),
        ("<|python_tag|> [", True),
        ("<|python_tag|>brave_search.call(", False),
        ("The", False),
        ("I ", False),
        ("<b>", False),
        ("; {", False),
        ('"get_time"', False),
    ],
)
def test_text_is_held_back_only_while_it_may_be_a_call(prefix: str, held: bool) -> None:
    assert may_be_tool_call(prefix) is held


@pytest.mark.parametrize(
    "text",
    [
        ' <|python_tag|> {"name": "get_weather", "parameters": {"city": "Paris"}}<|eom_id|>',
        '[{"name": "get_time", "parameters": {}}]',
        *SEVERAL,
    ],
)
def test_no_prefix_of_a_call_is_released_as_text(text: str) -> None:
    assert parse_tool_calls(text, TOOLS, new_id) is not None
    assert all(may_be_tool_call(text[:end]) for end in range(len(text) + 1))


# --- tool_call_schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("choice", ["auto", "none", None])
def test_no_forced_call_unless_asked(choice: Any) -> None:
    assert tool_call_schema(TOOLS, choice) is None


def test_a_named_tool_forces_that_tool() -> None:
    schema = tool_call_schema(TOOLS, NamedToolChoice(FunctionName("get_weather")))
    assert schema == {
        "type": "object",
        "properties": {"name": {"const": "get_weather"}, "parameters": WEATHER.parameters},
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }
    jsonschema.validate({"name": "get_weather", "parameters": {"city": "Oslo"}}, schema)
    for wrong in [
        {"name": "get_time", "parameters": {}},
        {"name": "get_weather", "parameters": {}},
        {"name": "get_weather", "parameters": {"city": "Oslo"}, "extra": 1},
        {"name": "get_weather"},
    ]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)


def test_required_forces_any_one_of_the_tools() -> None:
    schema = tool_call_schema(TOOLS, "required")
    assert schema is not None
    assert len(schema["anyOf"]) == 2
    jsonschema.validate({"name": "get_time", "parameters": {}}, schema)
    jsonschema.validate({"name": "get_weather", "parameters": {"city": "Oslo"}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "launch_rockets", "parameters": {}}, schema)
    assert tool_call_schema([WEATHER], "required") == tool_call_schema(
        [WEATHER], NamedToolChoice(FunctionName("get_weather"))
    )


def test_parameters_without_a_type_are_an_object() -> None:
    loose = Function(name="f", parameters={"properties": {"x": {"type": "integer"}}})
    schema = tool_call_schema([loose], "required")
    assert schema is not None
    assert schema["properties"]["parameters"] == {"type": "object", "properties": {"x": {"type": "integer"}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"name": "f", "parameters": [1]}, schema)


def test_a_forced_call_parses_back() -> None:
    schema = tool_call_schema(TOOLS, "required")
    output = json.dumps({"name": "get_weather", "parameters": {"city": "Oslo"}})
    jsonschema.validate(json.loads(output), schema)
    (parsed,) = parse_tool_calls(output, TOOLS, new_id) or []
    assert (parsed.name, parsed.arguments) == ("get_weather", {"city": "Oslo"})


def test_naming_an_unknown_tool_is_a_bad_request() -> None:
    with pytest.raises(SluiceError) as raised:
        tool_call_schema([WEATHER], NamedToolChoice(FunctionName("nope")))
    error = raised.value
    assert (error.code, int(error.code), error.status, error.param) == (
        ErrorCode.BAD_INPUT,
        5006,
        400,
        "tool_choice",
    )
    assert error.message == "Bad input: tool_choice: no tool named 'nope' in tools"
