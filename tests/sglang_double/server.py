"""An HTTP server that speaks SGLang 0.5's native API as ``reference/sglang-and-arq.md`` records it.

``POST /generate`` (streaming), ``/abort_request``, ``/load_lora_adapter``,
``/unload_lora_adapter``, ``/health``, ``/get_server_info``. Replies are scripted (``POST
/_script``); each is tokenized with the model's real tokenizer and streamed one token per frame,
with cumulative ``text`` and SGLang's ``meta_info`` (finish reasons stop/length/abort, usage), stop
strings trimmed from the last frame as SGLang does. ``GET /_log`` tells a test what the server
saw: request bodies, aborts, streams whose client left.

Run: ``python -m tests.sglang_double.server --port P --tokenizer DIR [--unready-for S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import uvicorn
from litestar import Litestar, Request, get, post
from litestar.response import Response, Stream
from tokenizers import Tokenizer

DEFAULT_REPLY = "Hello! I am a test double that speaks SGLang's wire format."


class Script(msgspec.Struct, kw_only=True):
    """One scripted reply; the next ``/generate`` takes the oldest."""

    text: str = DEFAULT_REPLY
    #: Seconds between tokens (pacing the stream like a GPU would).
    interval: float = 0.0
    #: After this many tokens: ``die`` exits the server; ``abort`` ends with an abort finish;
    #: ``error`` sends an error frame.
    after: int = 0
    then: str | None = None
    message: str = ""
    status_code: int | None = None


class State:
    def __init__(self, tokenizer: Tokenizer, model_path: str, ready_at: float, incremental: bool) -> None:
        self.tokenizer = tokenizer
        self.incremental = incremental
        self.model_path = model_path
        self.ready_at = ready_at
        self.scripts: deque[Script] = deque()
        self.requests: list[Any] = []
        self.aborted: set[str] = set()
        self.abort_requests: list[str] = []
        self.disconnected: list[str] = []
        self.loras: dict[str, str] = {}
        self.lora_loads: list[str] = []
        self.eos = tokenizer.token_to_id("<|im_end|>") or 0


def frame(value: Any) -> bytes:
    return b"data: " + msgspec.json.encode(value) + b"\n\n"


def meta(rid: str, prompt: int, completion: int, finish: Any = None) -> dict[str, Any]:
    return {
        "id": rid,
        "finish_reason": finish,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": 0,
    }


async def stream(state: State, body: dict[str, Any], script: Script) -> AsyncIterator[bytes]:
    rid, params = body["rid"], body["sampling_params"]
    prompt = len(body["input_ids"])
    ids = state.tokenizer.encode(script.text, add_special_tokens=False).ids
    skip = params.get("skip_special_tokens", True)
    stops = params.get("stop") or []
    limit = params["max_new_tokens"]
    finished = False
    finish: dict[str, Any] | None
    shown = ""  # what earlier frames carried, for --incremental-streaming-output
    try:
        for n in range(1, len(ids) + 1):
            if script.interval:
                await asyncio.sleep(script.interval)
            if rid in state.aborted:
                finished = True
                finish = {"type": "abort", "message": "Abort"}
                yield frame({"text": "", "meta_info": meta(rid, prompt, n - 1, finish)})
                break
            if script.then and n > script.after:
                finished = True
                if script.then == "die":
                    os._exit(1)  # the server goes away mid-stream, as a crashed process does
                if script.then == "error":
                    yield frame({"error": {"message": script.message}})
                    break
                finish = {"type": "abort", "message": script.message, "status_code": script.status_code}
                yield frame({"text": "", "meta_info": meta(rid, prompt, n - 1, finish)})
                break
            text = state.tokenizer.decode(ids[:n], skip_special_tokens=skip)
            hit = next((s for s in stops if s in text), None)
            if hit is not None:
                finished = True
                text = text[: text.index(hit)]  # SGLang trims the matched stop string at the end
                finish = {"type": "stop", "matched": hit}
            elif n == limit and n < len(ids):
                finished = True
                finish = {"type": "length", "length": limit}
            elif n == len(ids):
                finished = True
                finish = {"type": "stop", "matched": state.eos}
            else:
                finish = None
            piece, shown = (text[len(shown) :], text) if state.incremental else (text, "")
            yield frame({"text": piece, "output_ids": ids[:n], "meta_info": meta(rid, prompt, n, finish)})
            if finished:
                break
        yield b"data: [DONE]\n\n"
    finally:
        if not finished:
            state.disconnected.append(rid)


def create_app(state: State) -> Litestar:
    @post("/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Stream | Response[Any]:
        body = msgspec.json.decode(await request.body())
        state.requests.append(body)
        if not body.get("stream"):
            return Response({"error": {"message": "this double only streams"}}, status_code=400)
        if body.get("lora_path") and body["lora_path"] not in state.loras:  # as SGLang: never loaded
            return Response(
                {"error": {"message": f"LoRA {body['lora_path']} is not loaded"}}, status_code=400
            )
        script = state.scripts.popleft() if state.scripts else Script()
        return Stream(stream(state, body, script), media_type="text/event-stream")

    @post("/abort_request", status_code=200)
    async def abort_request(data: dict[str, Any]) -> None:
        state.abort_requests.append(data["rid"])
        state.aborted.add(data["rid"])

    @post("/load_lora_adapter", status_code=200)
    async def load_lora(data: dict[str, Any]) -> Response[Any]:
        path = Path(data["lora_path"])
        if not (path / "adapter_config.json").is_file():
            failure = {"success": False, "error_message": f"no adapter_config.json in {path}"}
            return Response(failure, status_code=400)
        if data["lora_name"] in state.loras:  # SGLang refuses a name it holds (LoRAManager)
            message = f"Failed to load LoRA adapter {data['lora_name']} because it is already loaded"
            return Response({"success": False, "error_message": message}, status_code=400)
        state.loras[data["lora_name"]] = str(path)
        state.lora_loads.append(data["lora_name"])
        return Response({"success": True, "error_message": None, "loaded_adapters": state.loras})

    @post("/unload_lora_adapter", status_code=200)
    async def unload_lora(data: dict[str, Any]) -> Response[Any]:
        state.loras.pop(data["lora_name"], None)
        return Response({"success": True, "error_message": None, "loaded_adapters": state.loras})

    @get("/health")
    async def health() -> Response[str]:
        return Response("", status_code=200 if time.monotonic() >= state.ready_at else 503)

    @get("/get_server_info")
    async def server_info() -> dict[str, Any]:
        return {
            "model_path": state.model_path,
            "tokenizer_path": state.model_path,
            "incremental_streaming_output": state.incremental,
            "context_length": 8192,
            "version": "0.5.23 (test double)",
        }

    @post("/_script", status_code=200)
    async def script(data: Script) -> None:
        state.scripts.append(data)

    @get("/_log")
    async def log() -> dict[str, Any]:
        return {
            "requests": state.requests,
            "abort_requests": state.abort_requests,
            "disconnected": state.disconnected,
            "argv": sys.argv,
            "loras": state.loras,
            "lora_loads": state.lora_loads,
            "pid": os.getpid(),
        }

    routes = [generate, abort_request, load_lora, unload_lora, health, server_info, script, log]
    return Litestar(routes, logging_config=None)


def serve(port: int, model_path: str, unready_for: float = 0.0, incremental: bool = False) -> None:
    tokenizer = Tokenizer.from_file(str(Path(model_path) / "tokenizer.json"))
    state = State(tokenizer, model_path, time.monotonic() + unready_for, incremental)
    uvicorn.run(create_app(state), host="127.0.0.1", port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokenizer", "--model-path", dest="model_path", required=True)
    parser.add_argument("--unready-for", type=float, default=0.0)
    parser.add_argument("--incremental-streaming-output", action="store_true")
    args, _ = parser.parse_known_args()  # like launch_server's flags the double has no use for
    serve(args.port, args.model_path, args.unready_for, args.incremental_streaming_output)


if __name__ == "__main__":
    main()
