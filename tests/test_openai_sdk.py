"""The official `openai` SDK, pointed at Sluice and changed in nothing else."""

from __future__ import annotations

import asyncio

import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from sluice.config import load_settings
from tests.conftest import MODEL, Stack

QUESTION: list[ChatCompletionMessageParam] = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return openai.OpenAI(api_key="unused", base_url=f"{stack.url}/v1", max_retries=0)


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    choice = completion.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    assert completion.model == MODEL
    assert completion.usage is not None
    assert completion.usage.prompt_tokens > 0
    assert 0 < completion.usage.completion_tokens <= 24
    assert (
        completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    )


def test_max_tokens_cuts_the_answer(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0,
        max_completion_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 5


def test_stream_matches_the_whole_answer(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=24)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    # Usage once, in a last chunk with no choices, as OpenAI sends it.
    assert chunks[-1].choices == []
    assert chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_without_usage_option_has_no_usage(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=4, temperature=0, stream=True
        )
    )
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


async def test_async_client_concurrent_requests_each_get_their_own_answer(stack: Stack) -> None:
    client = openai.AsyncOpenAI(api_key="unused", base_url=f"{stack.url}/v1", max_retries=0)
    questions = {
        "What is the capital of France?": "Paris",
        "What is the capital of Germany?": "Berlin",
        "What is the opposite of hot?": "cold",
    }

    async def ask(prompt: str) -> str:
        completion = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=16
        )
        return completion.choices[0].message.content or ""

    answers = await asyncio.gather(*(ask(q) for q in questions))
    # Batched into shared forward passes, each answer is its own question's.
    for answer, city in zip(answers, questions.values(), strict=True):
        assert city in answer
    await client.close()


def test_account_scoped_base_url(stack: Stack) -> None:
    client = openai.OpenAI(api_key="unused", base_url=f"{stack.url}/client/v4/accounts/acct/ai/v1")
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=8)
    assert completion.choices[0].message.content


def test_models_list_names_the_served_model_and_what_serves_it(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    served_by = models[0].model_extra["served_by"]  # type: ignore[index]
    served = load_settings().served(MODEL)  # as configured for this deployment
    assert (served_by["engine"], served_by["model"]) == (served.engine, served.model)
    assert client.models.retrieve(MODEL).id == MODEL


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-nope", messages=QUESTION)
    assert raised.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_out_of_range_field_is_a_bad_request_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, temperature=7)
    assert "temperature" in raised.value.message


def test_n_above_one_is_refused_not_ignored(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model=MODEL, messages=QUESTION, n=2)
    assert raised.value.body["param"] == "n"  # type: ignore[index]


def test_a_negative_frequency_penalty_is_honoured_as_openai_does(client: openai.OpenAI) -> None:
    """OpenAI takes penalties from -2 (the Workers AI schema only from 0): a negative one favours
    tokens already said, so the greedy answer changes."""

    story: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Write a poem about the sea."}]

    def answer(penalty: float) -> str | None:
        completion = client.chat.completions.create(
            model=MODEL, messages=story, temperature=0, max_tokens=32, frequency_penalty=penalty
        )
        return completion.choices[0].message.content

    assert answer(-2) != answer(0)
