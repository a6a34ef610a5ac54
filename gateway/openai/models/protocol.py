"""OpenAI model-listing types."""

from __future__ import annotations

from typing import Literal

import msgspec


class ServedBy(msgspec.Struct):
    engine: str
    model: str
    description: str


class Model(msgspec.Struct, omit_defaults=True):
    id: str
    created: int
    owned_by: str
    #: Not an OpenAI field (SDKs keep extra fields): what really answers under this name.
    served_by: ServedBy
    object: Literal["model"] = "model"
    #: A LoRA adapter's base model (as OpenAI names a fine-tuned model's); absent for a base model.
    parent: str | None = None


class ModelList(msgspec.Struct):
    data: list[Model]
    object: Literal["list"] = "list"
