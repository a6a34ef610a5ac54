"""Sluice: a self-hosted Workers AI and OpenAI-compatible LLM gateway."""

__version__ = "0.1.0"
