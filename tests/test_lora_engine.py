"""LoRA adapters on the CPU engine: real PEFT adapters for the served model, applied per row of a
shared batch, each row's greedy output what peft itself gives for that adapter."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from prometheus_client import REGISTRY
from transformers import AutoModelForCausalLM

from sluice.config import DEFAULT_MODELS, load_settings
from tests.test_transformers_engine import as_request, collect, greedy
from worker.engines.base import AdapterFiles, EngineRequest
from worker.engines.transformers_engine import TransformersEngine, resolve_weights
from worker.prompt import prompt_ids

PROMPT = greedy("Name a fruit.", max_tokens=16)


def make_adapter(weights: Path, folder: Path, seed: int, modules: list[str]) -> Path:
    """A real PEFT LoRA adapter with random, non-zero weights (a fresh one would change nothing),
    scaled up enough that every greedy answer changes, not only its logits."""
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=64, target_modules=modules, init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, AdapterFiles]:
    weights = resolve_weights(DEFAULT_MODELS[0].model, Path(load_settings().cache_dir))
    root = tmp_path_factory.mktemp("adapters")
    return {
        "a": AdapterFiles("ft-a", make_adapter(weights, root / "a", 1, ["q_proj", "v_proj"])),
        "b": AdapterFiles("ft-b", make_adapter(weights, root / "b", 2, ["k_proj", "o_proj", "down_proj"])),
    }


@pytest.fixture(scope="module")
async def lora_engine() -> AsyncIterator[TransformersEngine]:
    """Its own engine (float32, for bit-exact rows), holding one adapter at a time."""
    engine = TransformersEngine(
        DEFAULT_MODELS[0], load_settings().cache_dir, dtype=torch.float32, max_adapters=1
    )
    await engine.start()
    yield engine
    await engine.close()


def with_adapter(adapter: AdapterFiles | None) -> EngineRequest:
    return dataclasses.replace(as_request(PROMPT), adapter=adapter)


def peft_reference(engine: TransformersEngine, adapter: AdapterFiles) -> str:
    """What peft alone generates for the adapter: a fresh model, the adapter loaded by peft."""
    weights = resolve_weights(engine.served.model, Path(load_settings().cache_dir))
    base = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32)
    model: Any = PeftModel.from_pretrained(base, str(adapter.path), adapter_name=adapter.name).eval()
    ids = prompt_ids(engine.tokenizer, as_request(PROMPT))
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            max_new_tokens=PROMPT.max_tokens,
            do_sample=False,
            adapter_names=[adapter.name],
        )
    text: str = engine.tokenizer.decode(out[0][len(ids) :], skip_special_tokens=True)
    return text


def counted(what: str) -> float:
    value = REGISTRY.get_sample_value(f"sluice_worker_adapter_{what}_total", {"engine": "transformers"})
    return value or 0.0


async def run(engine: TransformersEngine, adapter: AdapterFiles | None, rid: str) -> str:
    text, _, _ = await collect(engine.submit(rid, with_adapter(adapter)))
    return text


async def test_each_adapter_changes_the_answer_as_peft_does(
    lora_engine: TransformersEngine, adapters: dict[str, AdapterFiles]
) -> None:
    before = {name: counted(name) for name in ("loads", "evictions")}
    base = await run(lora_engine, None, "base")
    a = await run(lora_engine, adapters["a"], "a")
    b = await run(lora_engine, adapters["b"], "b")
    assert len({base, a, b}) == 3, (base, a, b)
    # Room for one: b's load evicted a; the worker's metrics say so.
    assert counted("loads") - before["loads"] == 2
    assert counted("evictions") - before["evictions"] == 1
    assert REGISTRY.get_sample_value("sluice_worker_adapters_loaded", {"engine": "transformers"}) == 1
    assert a == peft_reference(lora_engine, adapters["a"])
    assert b == peft_reference(lora_engine, adapters["b"])


async def test_concurrent_rows_of_different_adapters_each_get_their_own(
    lora_engine: TransformersEngine, adapters: dict[str, AdapterFiles]
) -> None:
    cases: list[tuple[str, AdapterFiles | None]] = [("base", None), *adapters.items()]
    alone = [await run(lora_engine, adapter, f"alone-{name}") for name, adapter in cases]
    together = await asyncio.gather(
        *(run(lora_engine, adapter, f"together-{name}") for name, adapter in cases)
    )
    assert alone == together
    assert len(lora_engine.adapters.names) <= 2, "past its capacity, only adapters in use stay"


async def test_an_adapter_that_does_not_load_fails_its_request_only(
    lora_engine: TransformersEngine, tmp_path: Path
) -> None:
    missing = AdapterFiles("missing", tmp_path / "nowhere")
    generation = lora_engine.submit("broken", with_adapter(missing))
    with pytest.raises(Exception, match="does not load"):
        await collect(generation)
    assert await run(lora_engine, None, "after") != ""
