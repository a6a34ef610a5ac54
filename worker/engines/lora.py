"""LoRA adapters on the CPU engine: peft's mixed-batch LoRA, so one forward pass serves rows of
different adapters (and of the base model) together.

An adapter's files are read and parsed off the engine thread (:func:`read_adapter`); only
grafting the parsed weights onto the model happens on it, between two forward passes, so a
load never stalls the batch. Past ``capacity`` adapters, the least recently used one that no
running row needs is removed.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from peft.utils import load_peft_weights, set_peft_model_state_dict

from worker import metrics

log = logging.getLogger("sluice.worker.engine")

#: The row name peft's mixed batches use for "no adapter".
BASE = "__base__"


@dataclass(frozen=True)
class ParsedAdapter:
    name: str
    config: LoraConfig
    weights: dict[str, torch.Tensor]


def read_adapter(name: str, path: Path) -> ParsedAdapter:
    """Parse an adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``): slow, so
    never on the engine thread."""
    config = LoraConfig.from_pretrained(str(path))
    config.inference_mode = True
    return ParsedAdapter(name, config, load_peft_weights(str(path), device="cpu"))


class Adapters:
    """The adapters grafted onto one model, least recently used first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._model: PeftModel | None = None
        self._loaded: OrderedDict[str, None] = OrderedDict()
        metrics.adapters_seen("transformers")

    def __contains__(self, name: str) -> bool:
        return name in self._loaded

    @property
    def names(self) -> list[str]:
        return list(self._loaded)

    def model(self, base: Any) -> Any:
        """What runs a forward pass: the base model until the first adapter, then peft's wrapper."""
        return base if self._model is None else self._model

    def graft(self, base: Any, adapter: ParsedAdapter, in_use: set[str]) -> None:
        if adapter.name in self._loaded:
            return
        if self._model is None:
            self._model = PeftModel(base, adapter.config, adapter_name=adapter.name).eval()
        else:
            self._model.add_adapter(adapter.name, adapter.config)
        set_peft_model_state_dict(self._model, adapter.weights, adapter_name=adapter.name)
        self._loaded[adapter.name] = None
        metrics.ADAPTER_LOADS.labels("transformers").inc()
        # Rows name their adapters; the "active" one only has to exist, and eviction may remove it.
        self._model.set_adapter(adapter.name)
        self._evict(in_use | {adapter.name})
        metrics.ADAPTERS_LOADED.labels("transformers").set(len(self._loaded))

    def touch(self, name: str) -> None:
        self._loaded.move_to_end(name)

    def _evict(self, in_use: set[str]) -> None:
        assert self._model is not None
        for name in [n for n in self._loaded if n not in in_use][: max(0, len(self._loaded) - self.capacity)]:
            self._model.delete_adapter(name)
            del self._loaded[name]
            metrics.ADAPTER_EVICTIONS.labels("transformers").inc()
            log.info("adapter %s evicted (%d loaded)", name, len(self._loaded))

    def row_names(self, adapters: Sequence[str | None]) -> dict[str, Any]:
        """The forward pass's extra arguments for rows of these adapters (``None``: the base)."""
        if self._model is None or not any(adapters):
            return {}
        return {"adapter_names": [name or BASE for name in adapters]}

    def only_base(self, adapters: Sequence[str | None]) -> AbstractContextManager[Any]:
        """Around a forward pass of base rows only: the LoRA layers step aside entirely, so base
        traffic pays nothing for adapters grafted beside it (peft's mixed path would still
        sort every row by adapter in every layer)."""
        if self._model is None or any(adapters):
            return nullcontext()
        return self._model.disable_adapter()
