"""Configuration from environment and flags, printed with secrets masked."""

from __future__ import annotations

import json

import pytest

from sluice.config import DEFAULT_MODEL_NAME, Settings, describe, load_settings
from sluice.errors import ErrorCode, SluiceError


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {"SLUICE_PORT": "9000", "SLUICE_POLL_DELAY": "0.001", "REDIS_URL": "redis://r:6379/0"}
    settings = load_settings({"port": 9100, "host": None}, environ=env)
    assert settings.port == 9100
    assert settings.host == "127.0.0.1"
    assert settings.poll_delay == 0.001
    assert settings.redis_url == "redis://r:6379/0"


def test_served_models_are_configuration() -> None:
    table = [{"name": "my-model", "engine": "transformers", "model": "/models/x", "context_window": 2048}]
    settings = load_settings(environ={"SLUICE_MODELS": json.dumps(table)})
    assert settings.served("my-model").context_window == 2048
    with pytest.raises(SluiceError) as raised:
        settings.served(DEFAULT_MODEL_NAME)
    assert raised.value.code is ErrorCode.NO_SUCH_MODEL


def test_bad_values_are_refused_by_type() -> None:
    with pytest.raises(Exception, match="port"):
        load_settings(environ={"SLUICE_PORT": "eighty"})


def test_redis_password_is_masked_in_the_banner() -> None:
    settings = load_settings(environ={"REDIS_URL": "redis://user:hunter2@redis.internal:6379/0"})
    shown = json.dumps(describe(settings))
    assert "hunter2" not in shown
    assert "redis://user:****@redis.internal:6379/0" in shown


def test_a_worker_runs_its_served_name_on_the_engine_and_weights_it_is_given() -> None:
    env = {"SLUICE_WORKER_ENGINE": "sglang", "SLUICE_MODEL_PATH": "meta-llama/Llama-3.1-8B-Instruct"}
    served = load_settings(environ=env).worker_served()
    assert (served.name, served.engine, served.model) == (
        DEFAULT_MODEL_NAME,
        "sglang",
        "meta-llama/Llama-3.1-8B-Instruct",
    )


@pytest.mark.parametrize(
    "raw",
    [
        '--tp-size 2 --chat-template "my template.jinja"',
        '["--tp-size", "2", "--chat-template", "my template.jinja"]',
    ],
)
def test_sglang_flags_come_from_a_shell_line_or_a_json_list(raw: str) -> None:
    settings = load_settings(environ={"SLUICE_SGLANG_ARGS": raw})
    assert settings.sglang_args == ("--tp-size", "2", "--chat-template", "my template.jinja")


def test_flags_after_a_double_dash_pass_through_to_sglang(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluice import cli

    seen: list[Settings] = []
    monkeypatch.setattr(cli, "run_worker", seen.append)
    argv = [
        "worker",
        "--engine",
        "sglang",
        "--model",
        "/models/llama",
        "--",
        "--enable-lora",
        "--tp-size",
        "2",
    ]
    assert cli.main(argv) == 0
    (settings,) = seen
    assert settings.sglang_args == ("--enable-lora", "--tp-size", "2")
    assert settings.worker_served().model == "/models/llama"
    with pytest.raises(SystemExit):
        cli.main(["worker", "--engine", "vllm"])
