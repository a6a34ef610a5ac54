"""The OpenAI-compatible API, one package per endpoint: ``chat``, ``completions``, ``models``."""

from __future__ import annotations

from litestar.types import ControllerRouterHandler

from gateway.openai.chat.router import ChatController
from gateway.openai.completions.router import CompletionsController
from gateway.openai.models.router import ModelsController

CONTROLLERS: list[ControllerRouterHandler] = [ChatController, CompletionsController, ModelsController]
