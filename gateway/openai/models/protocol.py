"""OpenAI model-listing types."""

from __future__ import annotations

from typing import Literal

import msgspec


class ServedBy(msgspec.Struct):
    engine: str
    model: str
    description: str


class Model(msgspec.Struct):
    id: str
    created: int
    owned_by: str
    #: Not an OpenAI field (SDKs keep extra fields): what really answers under this name.
    served_by: ServedBy
    object: Literal["model"] = "model"


class ModelList(msgspec.Struct):
    data: list[Model]
    object: Literal["list"] = "list"
