"""Configuration from environment and flags, printed with secrets masked."""

from __future__ import annotations

import json

import pytest

from sluice.config import DEFAULT_MODEL_NAME, describe, load_settings
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
