"""Engines behind one interface (:class:`worker.engines.base.Engine`), chosen by configuration."""

from __future__ import annotations

from sluice.config import ServedModel, Settings
from worker.engines.base import Engine


def create_engine(served: ServedModel, settings: Settings) -> Engine:
    """Import only the engine asked for: a CPU worker never imports SGLang, nor the reverse."""
    if served.engine == "transformers":
        from worker.engines.transformers_engine import TransformersEngine

        return TransformersEngine(served, settings.cache_dir)
    raise ValueError(f"engine {served.engine!r} is not available in this build")
