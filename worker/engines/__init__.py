"""Engines behind one interface (:class:`worker.engines.base.Engine`), chosen by configuration."""

from __future__ import annotations

from sluice.config import ServedModel, Settings
from worker.engines.base import Engine


def create_engine(served: ServedModel, settings: Settings, concurrency: int | None = None) -> Engine:
    """Import only the engine asked for: a CPU worker never imports torch for SGLang's sake, nor
    the reverse. ``concurrency``: the jobs that will run at once (the engine sizes for it)."""
    if served.engine == "transformers":
        from worker.engines.transformers_engine import TransformersEngine

        return TransformersEngine(served, settings.cache_dir, max_adapters=settings.max_loaded_adapters)
    if served.engine == "synthetic":
        from worker.engines.synthetic import SyntheticEngine

        rate, delay = settings.synthetic_tokens_per_second, settings.synthetic_first_token_delay
        return SyntheticEngine(served, tokens_per_second=rate, first_token_delay=delay)
    if served.engine == "sglang":
        from worker.engines.sglang import SGLangEngine
        from worker.engines.sglang.engine import SGLangOptions

        streams = concurrency or SGLangEngine.default_concurrency
        options = SGLangOptions.of(settings)
        return SGLangEngine(served, options, max_streams=streams, max_adapters=settings.max_loaded_adapters)
    raise ValueError(f"engine {served.engine!r} is not available in this build")
