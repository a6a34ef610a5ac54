"""The ``sluice`` command: ``up`` (all in one), ``gateway`` and ``worker``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, get_args

import msgspec
from pythonjsonlogger.json import JsonFormatter

from sluice.config import EngineName, Settings, describe, load_settings
from sluice.redis_server import EmbeddedRedis

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger("sluice")


def _setup_logging(level: str, form: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if form == "json":
        # python-json-logger: fields given as ``extra=`` (request_id, status, ...) become keys.
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    # httpx logs every request at INFO: the SGLang engine's health checks would flood the log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _banner(role: str, settings: Settings) -> None:
    print(f"sluice {role}: settings {json.dumps(describe(settings), sort_keys=True)}", file=sys.stderr)
    for served in [settings.worker_served()] if role == "worker" else settings.models:
        line = f"sluice {role}: serving {served.name!r} with {served.engine} running {served.model}"
        print(line, file=sys.stderr)
        if served.description:
            print(f"sluice {role}:   {served.description}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--redis-url", help="redis://… (env REDIS_URL)")
        sub.add_argument("--log-level", help="debug, info, warning (env SLUICE_LOG_LEVEL)")

    def http(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--host", help="address to listen on (env SLUICE_HOST, default 127.0.0.1)")
        sub.add_argument("--port", type=int, help="port to listen on (env SLUICE_PORT, default 8080)")

    def worker(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--served-model-name", dest="worker_model", help="served name this worker runs")
        engines = get_args(EngineName)
        sub.add_argument("--engine", dest="worker_engine", choices=engines, help="engine to run it on")
        sub.add_argument("--model", dest="model_path", help="weights: a folder, .gguf file or hub id")
        sub.add_argument("--concurrency", dest="worker_concurrency", type=int, help="jobs at once")
        sub.add_argument("--sglang-url", help="an SGLang server already running (else one is started)")

    up = commands.add_parser("up", help="Redis (embedded unless REDIS_URL is set), a worker and the gateway")
    for add in (common, http, worker):
        add(up)
    gateway = commands.add_parser("gateway", help="the HTTP gateway")
    common(gateway)
    http(gateway)
    work = commands.add_parser(
        "worker",
        help="a worker running one served model",
        epilog="Flags after `--` pass through to sglang.launch_server (engine sglang).",
    )
    common(work)
    worker(work)
    keys = commands.add_parser("keys", help="API keys: create (shown once), list, revoke")
    common(keys)
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_commands.add_parser("create", help="a new key for an account, printed once")
    create.add_argument("--account", dest="key_account", required=True, help="the account it may use")
    create.add_argument("--name", dest="key_name", default="", help="a label for people")
    for limit in ("rpm", "tpm", "concurrency"):
        create.add_argument(f"--{limit}", dest=f"key_{limit}", type=int, help=f"its own {limit} limit")
    create.add_argument("--file", dest="key_file", help="add it to this keys file, not to Redis")
    listing = keys_commands.add_parser("list", help="the keys (their ids, never the keys)")
    listing.add_argument("--file", dest="key_file", help="list this keys file's, not Redis's")
    revoke = keys_commands.add_parser("revoke", help="remove a key stored in Redis")
    revoke.add_argument("key_id", help="its id, as `sluice keys list` shows it")
    from sluice.lora_cli import add_parser as add_lora

    add_lora(commands, common)
    status = commands.add_parser(
        "status", help="queues, workers, traffic and errors, from Redis and /metrics"
    )
    common(status)
    status.add_argument(
        "--gateway-url", default="http://127.0.0.1:8080", help="where the gateway's /metrics is"
    )
    return parser


def _settings(args: argparse.Namespace, passthrough: list[str]) -> Settings:
    fields = {field.name for field in msgspec.structs.fields(Settings)}
    flags = {k: v for k, v in vars(args).items() if k in fields}
    if passthrough:
        flags["sglang_args"] = passthrough
    return load_settings(flags)


def http_server(
    app: Callable[..., Awaitable[None]], host: str, port: int, log_level: str, grace: float
) -> uvicorn.Server:
    """The HTTP server the gateway runs on (``benchmarks/floor.py`` measures it with no app)."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        log_config=None,  # uvicorn's own lines go through the process's (JSON) handler too
        access_log=False,  # gateway/metrics.py writes one richer line per request
        # Streams still open get this long after SIGTERM (the same grace a worker drains for).
        timeout_graceful_shutdown=int(grace),
    )
    return uvicorn.Server(config)


def run_gateway(settings: Settings) -> None:
    from gateway.app import create_app

    if not settings.redis_url:
        sys.exit("sluice gateway: set REDIS_URL or --redis-url (or use `sluice up`)")
    _banner("gateway", settings)
    app = create_app(settings)
    http_server(app, settings.host, settings.port, settings.log_level, settings.shutdown_grace).run()


def run_worker(settings: Settings) -> None:
    import uvloop

    from worker.main import serve

    if not settings.redis_url:
        sys.exit("sluice worker: set REDIS_URL or --redis-url (or use `sluice up`)")
    _banner("worker", settings)
    sys.exit(uvloop.run(serve(settings)))


def wait_ready(
    url: str,
    children: Sequence[subprocess.Popen[bytes]],
    timeout: float = 300,
    stopped: Callable[[], bool] = lambda: False,
) -> bool:
    """Whether the gateway at ``url`` answered ``/readyz`` with 200 and a live worker before
    ``timeout`` seconds, while none of ``children`` exited (and nobody asked to stop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stopped() or any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=1) as response:
                if response.status == 200 and json.load(response).get("workers"):
                    return True
        except (OSError, ValueError):  # not listening yet, or 503 while Redis is away
            pass
        time.sleep(0.1)
    return False


def _stop(children: Sequence[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def child_env(settings: Settings) -> dict[str, str]:
    """The resolved settings as environment variables, so children see exactly what ``up`` saw."""
    env = dict(os.environ)
    for name, value in msgspec.to_builtins(settings).items():
        if value is None:
            continue
        key = "REDIS_URL" if name == "redis_url" else f"SLUICE_{name.upper()}"
        env[key] = value if isinstance(value, str) else json.dumps(value)
    return env


OPEN_WARNING = (
    "sluice up: *** OPEN: no API keys exist, so this deployment takes requests WITHOUT a key and "
    "limits nothing. Create one (`sluice keys create --account ACCOUNT`) and restart, or set "
    "SLUICE_AUTH=keys. ***"
)


def _any_keys(settings: Settings) -> bool:
    from sluice.keys_cli import count_keys

    return count_keys(settings) > 0


def run_up(settings: Settings) -> int:
    embedded: EmbeddedRedis | None = None
    if not settings.redis_url:
        embedded = EmbeddedRedis().start()
        settings = msgspec.structs.replace(settings, redis_url=embedded.url)
        print(f"sluice up: started embedded redis-server at {embedded.url}", file=sys.stderr)
    if settings.auth == "keys" and "SLUICE_AUTH" not in os.environ and not _any_keys(settings):
        settings = msgspec.structs.replace(settings, auth="open")
        print(OPEN_WARNING, file=sys.stderr)
    env = child_env(settings)
    base = [sys.executable, "-m", "sluice"]
    # Own sessions: Ctrl-C reaches only this process, which then stops the children in order.
    gateway = subprocess.Popen([*base, "gateway"], env=env, start_new_session=True)
    worker = subprocess.Popen([*base, "worker"], env=env, start_new_session=True)
    children = [gateway, worker]
    stop_requested = False

    def request_stop(signum: int, frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    url = f"http://{settings.host}:{settings.port}"
    try:
        if wait_ready(url, children, stopped=lambda: stop_requested):
            print(f"sluice up: ready at {url} (Ctrl-C stops gateway, worker and Redis)", file=sys.stderr)
        while not stop_requested and all(child.poll() is None for child in children):
            time.sleep(0.2)
        failed = [child for child in children if child.poll() not in (None, 0)]
        if failed and not stop_requested:
            print(f"sluice up: a process exited with {failed[0].returncode}; stopping", file=sys.stderr)
    finally:
        _stop(children)
        if embedded is not None:
            embedded.stop()
        print("sluice up: stopped", file=sys.stderr)
    return 0 if stop_requested else 1


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    args = _parser().parse_args(argv[:split])
    settings = _settings(args, argv[split + 1 :])
    _setup_logging(settings.log_level, settings.log_format)
    if args.command == "status":
        from sluice.status import show

        if not settings.redis_url:
            sys.exit("sluice status: set REDIS_URL or --redis-url")
        return show(settings, args.gateway_url)
    if args.command == "lora":
        from sluice.lora_cli import run_lora

        return run_lora(settings, args)
    if args.command == "keys":
        from sluice.keys_cli import run_keys

        return run_keys(settings, args)
    if args.command == "gateway":
        run_gateway(settings)
    elif args.command == "worker":
        run_worker(settings)
    else:
        return run_up(settings)
    return 0
