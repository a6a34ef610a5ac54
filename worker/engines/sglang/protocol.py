"""SGLang's native HTTP API, as far as Sluice uses it (``reference/sglang-and-arq.md`` §1–§3).

``POST /generate`` takes token ids and sampling parameters and, with ``stream``, answers
Server-Sent Events: ``data: {text, output_ids, meta_info}`` per step, then ``data: [DONE]``; an
error is ``data: {"error": {"message": …}}``. By default ``text`` is cumulative (the whole text so
far); a server started with ``--incremental-streaming-output`` sends deltas instead.
"""

from __future__ import annotations

from typing import Any, Literal

from msgspec import Struct


class SamplingParams(Struct, omit_defaults=True):
    """``srt/sampling/sampling_params.py``; every field left out keeps SGLang's default."""

    #: Always set: SGLang's own default is 128.
    max_new_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    stop: list[str] | None = None
    #: A JSON Schema as JSON text; SGLang's grammar backend constrains decoding to it.
    json_schema: str | None = None
    #: Effective only on a server started with ``--enable-deterministic-inference``.
    sampling_seed: int | None = None
    #: ``False`` keeps ``<|python_tag|>`` in the text, which marks a Llama 3.1 tool call.
    skip_special_tokens: bool = True


class GenerateRequest(Struct, omit_defaults=True):
    input_ids: list[int]
    sampling_params: SamplingParams
    #: Unique per attempt: SGLang refuses a duplicate request id.
    rid: str
    #: No default here: ``omit_defaults`` would drop it, and SGLang's default is not to stream.
    stream: bool
    #: The name of a LoRA adapter loaded on the server.
    lora_path: str | None = None


class Finish(Struct, kw_only=True):
    """``meta_info.finish_reason``: stop (``matched``: a token id or a stop string), length, or
    abort (``message``, and ``status_code`` when the request itself was at fault)."""

    type: Literal["stop", "length", "abort"] | str
    matched: int | str | None = None
    message: str = ""
    status_code: int | None = None


class MetaInfo(Struct, kw_only=True):
    finish_reason: Finish | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ErrorBody(Struct):
    message: str = ""


class Chunk(Struct, kw_only=True):
    """One ``data:`` frame of a ``/generate`` stream; unknown fields (``output_ids``…) are skipped."""

    text: str = ""
    meta_info: MetaInfo | None = None
    error: ErrorBody | None = None


class ServerInfo(Struct, kw_only=True):
    """The part of ``GET /get_server_info`` (the server's arguments, flattened) Sluice reads."""

    model_path: str
    tokenizer_path: str | None = None
    incremental_streaming_output: bool = False
    version: str = ""


class LoRAUpdate(Struct, kw_only=True):
    """The answer of ``/load_lora_adapter`` and ``/unload_lora_adapter`` (200, or 400 on failure)."""

    success: bool
    error_message: str | None = None
    #: Adapter name → its path (older servers) or a ``LoRARef`` object (newer ones).
    loaded_adapters: dict[str, Any] | None = None
