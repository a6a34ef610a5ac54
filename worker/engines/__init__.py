"""Engines behind one interface (:class:`worker.engines.base.Engine`), chosen by configuration."""

from __future__ import annotations

from sluice.config import ServedModel, Settings
from worker.engines.base import Engine


def create_engine(served: ServedModel, settings: Settings) -> Engine:
    """Import only the engine asked for: a CPU worker never imports SGLang, nor the reverse."""
    if served.engine == "transformers":
        from worker.engines.transformers_engine import TransformersEngine

        return TransformersEngine(served, settings.cache_dir)
    if served.engine == "synthetic":
        from worker.engines.synthetic import SyntheticEngine

        rate, delay = settings.synthetic_tokens_per_second, settings.synthetic_first_token_delay
        return SyntheticEngine(served, tokens_per_second=rate, first_token_delay=delay)
    raise ValueError(f"engine {served.engine!r} is not available in this build")
