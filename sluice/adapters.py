"""LoRA adapters (Cloudflare's "finetunes"): files in a directory the workers read, metadata in Redis.

One finetune is a record in Redis (``finetune_key``: its metadata, plus one field per accepted
file) and a folder ``<adapter_dir>/<account>/<id>/`` holding PEFT's ``adapter_config.json`` and
``adapter_model.safetensors``. A file is accepted only after it is validated on its own and with
the other file when that is there, and it appears under its final name in one step (written to a
temporary file in the same folder, then linked), so a reader never sees half of one. A finetune is
*ready* once Redis records both files; until then using it is refused with 3039.

Both the gateway's finetune routes and ``sluice lora`` go through :class:`AdapterStore`.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Awaitable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import msgspec
from msgspec import Struct
from redis.asyncio import Redis
from safetensors import SafetensorError, safe_open

from sluice.config import Settings
from sluice.contract import AdapterRef, finetune_key, finetune_names_key
from sluice.errors import ErrorCode, SluiceError, bad_input, no_such_model, too_large

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
FILES = (CONFIG_FILE, WEIGHTS_FILE)

#: The linear layers of a Llama decoder layer: what SGLang and peft can put a LoRA on for it.
LLAMA_MODULES = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
#: Names in a base model's id that say it is not a Llama-architecture model (adapters for these
#: have other shapes even when their module names match).
_OTHER_FAMILIES = ("gpt2", "gpt-neo", "gpt-j", "bert", "t5", "bloom", "falcon", "opt-", "phi", "gemma",
                   "qwen", "mistral", "mixtral", "deepseek", "starcoder")  # fmt: skip
_META = "meta"
_COPY_CHUNK = 1 << 20
#: Accounts and names become folder names and Redis keys: no separators, no dot-dot.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: ``base_model.model.<path>.<module>.lora_A.weight``, as peft's ``save_pretrained`` writes it.
_LORA_TENSOR = re.compile(
    r"base_model\.model\.(?P<path>[\w.]+)\.(?P<module>\w+)\.lora_(?P<part>[AB])\.weight"
)
_FLOAT_DTYPES = frozenset({"F16", "BF16", "F32"})


class Finetune(Struct, kw_only=True, frozen=True):
    """One registered adapter, as stored in Redis (``files`` is derived, never stored in ``meta``)."""

    id: str
    account: str
    name: str
    model: str
    description: str = ""
    public: bool = False
    created_at: float
    modified_at: float
    files: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return all(name in self.files for name in FILES)

    @property
    def missing(self) -> list[str]:
        return [name for name in FILES if name not in self.files]


class PeftLoraConfig(Struct):
    """The part of peft's ``adapter_config.json`` that decides whether an engine can apply it."""

    peft_type: str | None = None
    r: int = 8
    target_modules: list[str] | str | None = None
    base_model_name_or_path: str | None = None
    task_type: str | None = None
    use_dora: bool = False
    rank_pattern: dict[str, int] = msgspec.field(default_factory=dict)
    modules_to_save: list[str] | None = None
    #: Cloudflare asks for this (``mistral|gemma|llama``); peft itself does not write it.
    model_type: str | None = None


@dataclass(frozen=True)
class LoraWeights:
    """What the safetensors hold: the rank of each adapted layer, by module name (q_proj, ...)."""

    ranks: dict[str, set[int]]


def finetune_missing_files(finetune: Finetune) -> SluiceError:
    missing = " and ".join(finetune.missing)
    return SluiceError(
        ErrorCode.FINETUNE_MISSING_FILES,
        400,
        f"Finetune {finetune.name!r} is missing required files: {missing} not uploaded yet",
        param="lora",
    )


def _not_found(account: str, ref: str) -> SluiceError:
    return SluiceError(
        ErrorCode.BAD_INPUT, 404, f"No finetune {ref!r} in account {account!r}", param="finetune_id"
    )


def _refused(file_name: str, why: str) -> SluiceError:
    return bad_input(f"{file_name} refused: {why}", param="file")


def _safe(value: str, what: str) -> str:
    if not _SAFE.fullmatch(value):
        raise bad_input(f"{what} {value!r}: use 1-128 letters, digits, '.', '_' or '-'", param=what)
    return value


# --- validation ---------------------------------------------------------------------------------


def check_config(raw: bytes, max_rank: int) -> PeftLoraConfig:
    """``adapter_config.json`` as a PEFT LoRA config an engine serving a Llama model can apply."""
    try:
        config = msgspec.json.decode(raw, type=PeftLoraConfig)
    except msgspec.DecodeError as exc:  # ValidationError included: a field of the wrong type
        raise _refused(CONFIG_FILE, f"not a PEFT adapter config ({exc})") from exc
    if config.peft_type != "LORA":
        raise _refused(
            CONFIG_FILE, f"peft_type is {config.peft_type!r}, not 'LORA': only LoRA adapters are served"
        )
    if config.task_type not in (None, "CAUSAL_LM"):
        raise _refused(CONFIG_FILE, f"task_type is {config.task_type!r}, not 'CAUSAL_LM'")
    if config.use_dora:
        raise _refused(CONFIG_FILE, "DoRA adapters (use_dora) are not supported by the engines")
    if config.modules_to_save:
        raise _refused(
            CONFIG_FILE, f"modules_to_save {config.modules_to_save} (full layers) are not supported"
        )
    if config.model_type is not None and config.model_type.lower() != "llama":
        raise _refused(
            CONFIG_FILE, f"model_type {config.model_type!r} is not 'llama', the served architecture"
        )
    base = (config.base_model_name_or_path or "").lower()
    family = next((name for name in _OTHER_FAMILIES if name in base), None)
    if family is not None:
        raise _refused(
            CONFIG_FILE, f"base model {config.base_model_name_or_path!r} is not a Llama-architecture model"
        )
    if not isinstance(config.target_modules, list) or not config.target_modules:
        raise _refused(
            CONFIG_FILE, "target_modules must be a list of module names (e.g. ['q_proj', 'v_proj'])"
        )
    foreign = sorted(set(config.target_modules) - LLAMA_MODULES)
    if foreign:
        allowed = ", ".join(sorted(LLAMA_MODULES))
        raise _refused(CONFIG_FILE, f"target_modules {foreign} are not layers of a Llama model ({allowed})")
    for rank in (config.r, *config.rank_pattern.values()):
        _check_rank(CONFIG_FILE, rank, max_rank)
    return config


def _check_rank(file_name: str, rank: int, max_rank: int) -> None:
    if not 1 <= rank <= max_rank:
        raise _refused(file_name, f"rank r={rank} is outside 1..{max_rank} (SLUICE_MAX_LORA_RANK)")


def check_weights(path: Path, max_rank: int) -> LoraWeights:
    """The safetensors load, and hold only LoRA A/B pairs of Llama layers with consistent ranks."""
    pairs: dict[str, dict[str, list[int]]] = {}
    try:
        # Shapes and dtypes come from the header; no tensor is materialized (no torch, no numpy).
        with safe_open(str(path), framework="numpy") as weights:
            for name in weights.keys():  # noqa: SIM118 - safe_open is not a mapping
                tensor = weights.get_slice(name)
                shape, dtype = list(tensor.get_shape()), tensor.get_dtype()
                match = _LORA_TENSOR.fullmatch(name)
                if match is None:
                    raise _refused(WEIGHTS_FILE, f"tensor {name!r} is not a LoRA A/B weight")
                if match["module"] not in LLAMA_MODULES:
                    raise _refused(
                        WEIGHTS_FILE, f"tensor {name!r} adapts {match['module']!r}, not a Llama layer"
                    )
                if dtype not in _FLOAT_DTYPES or len(shape) != 2:
                    raise _refused(
                        WEIGHTS_FILE, f"tensor {name!r} is {dtype} {shape}, not a 2-D float matrix"
                    )
                layer = f"{match['path']}.{match['module']}"
                pairs.setdefault(layer, {})[match["part"]] = shape
    except SafetensorError as exc:
        raise _refused(WEIGHTS_FILE, f"not a loadable safetensors file ({exc})") from exc
    if not pairs:
        raise _refused(WEIGHTS_FILE, "it holds no LoRA weights")
    ranks: dict[str, set[int]] = {}
    for layer, parts in pairs.items():
        if set(parts) != {"A", "B"}:
            raise _refused(WEIGHTS_FILE, f"layer {layer} has lora_{''.join(parts)} without its pair")
        # A is (rank, in_features), B is (out_features, rank).
        if parts["A"][0] != parts["B"][1]:
            raise _refused(
                WEIGHTS_FILE, f"layer {layer}: lora_A {parts['A']} and lora_B {parts['B']} disagree on rank"
            )
        _check_rank(WEIGHTS_FILE, parts["A"][0], max_rank)
        ranks.setdefault(layer.rsplit(".", 1)[1], set()).add(parts["A"][0])
    return LoraWeights(ranks)


def check_together(config: PeftLoraConfig, weights: LoraWeights, file_name: str) -> None:
    """The config describes these weights: the same modules, at its rank(s)."""
    targets = set(config.target_modules or ())
    if set(weights.ranks) != targets:
        raise _refused(
            file_name,
            f"the weights adapt {sorted(weights.ranks)} but the config targets {sorted(targets)}",
        )
    allowed = {config.r, *config.rank_pattern.values()}
    found = set().union(*weights.ranks.values())
    if not found <= allowed:
        raise _refused(
            file_name, f"the weights have rank(s) {sorted(found)} but the config says r={config.r}"
        )


# --- files --------------------------------------------------------------------------------------


def _copy_limited(source: IO[bytes], target: IO[bytes], limit: int, file_name: str) -> None:
    written = 0
    while chunk := source.read(_COPY_CHUNK):
        written += len(chunk)
        if written > limit:
            raise too_large(limit)
        target.write(chunk)
    if written == 0:
        raise _refused(file_name, "the file is empty")


def _validate(folder: Path, file_name: str, candidate: Path, max_rank: int) -> None:
    """``candidate`` (the new ``file_name``) on its own, then with the other file if it is in place."""
    if file_name == CONFIG_FILE:
        config = check_config(candidate.read_bytes(), max_rank)
        other = folder / WEIGHTS_FILE
        if other.exists():
            check_together(config, check_weights(other, max_rank), file_name)
    else:
        weights = check_weights(candidate, max_rank)
        other = folder / CONFIG_FILE
        if other.exists():
            check_together(check_config(other.read_bytes(), max_rank), weights, file_name)


def store_file(folder: Path, file_name: str, source: IO[bytes], *, max_bytes: int, max_rank: int) -> None:
    """Copy, validate and publish one file (blocking: run it in a thread).

    The copy goes to a temporary file in ``folder`` and is linked to its final name only once it
    is valid; a name that exists already is never replaced (assets cannot be changed).
    """
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=".upload-")
    try:
        with os.fdopen(handle, "wb") as target:
            _copy_limited(source, target, max_bytes, file_name)
        _validate(folder, file_name, Path(temporary), max_rank)
        try:
            os.link(temporary, folder / file_name)  # atomic, and fails rather than replace
        except FileExistsError as exc:
            raise _refused(file_name, "it was uploaded already; assets cannot be changed") from exc
        try:
            # Again, now that both may be in place: a concurrent upload of the other file may have
            # been checked before this one existed.
            _validate(folder, file_name, folder / file_name, max_rank)
        except SluiceError:
            os.unlink(folder / file_name)
            raise
    finally:
        os.unlink(temporary)


# --- the registry -------------------------------------------------------------------------------


def adapter_folder(directory: Path, adapter: AdapterRef) -> Path:
    """An adapter's folder in the store (the gateway writes it, workers read it)."""
    return directory / adapter.account / adapter.id


class AdapterStore:
    """Finetunes of every account: create, upload files, find, list, delete."""

    def __init__(
        self,
        redis: Redis,
        directory: str | Path,
        *,
        base_models: Collection[str],
        max_rank: int,
        max_bytes: int,
    ) -> None:
        self._redis = redis
        self.directory = Path(directory)
        self.base_models = base_models
        self.max_rank = max_rank
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, redis: Redis, settings: Settings) -> AdapterStore:
        """The store as the settings describe it (the gateway's and ``sluice lora``'s)."""
        return cls(
            redis,
            settings.adapters_path(),
            base_models=[served.name for served in settings.models],
            max_rank=settings.max_lora_rank,
            max_bytes=settings.max_adapter_bytes,
        )

    def folder(self, finetune: Finetune) -> Path:
        """Where its files are: the path workers load the adapter from."""
        return adapter_folder(self.directory, AdapterRef(finetune.account, finetune.id))

    async def create(self, account: str, model: str, name: str, description: str = "") -> Finetune:
        _safe(account, "account")
        _safe(name, "name")
        if model not in self.base_models:
            raise no_such_model(model)
        now = time.time()
        finetune = Finetune(
            id=str(uuid.uuid4()),
            account=account,
            name=name,
            model=model,
            description=description,
            created_at=now,
            modified_at=now,
        )
        # The name index doubles as the account's list; HSETNX makes the name unique.
        if not await cast(
            Awaitable[bool], self._redis.hsetnx(finetune_names_key(account), name, finetune.id)
        ):
            raise SluiceError(
                ErrorCode.BAD_INPUT, 409, f"A finetune named {name!r} exists already", param="name"
            )
        meta = {_META: msgspec.json.encode(finetune)}
        await cast(Awaitable[int], self._redis.hset(finetune_key(account, finetune.id), mapping=meta))
        return finetune

    async def find(self, account: str | None, ref: str) -> Finetune | None:
        """The account's finetune with this name or id, or None (another account's is None too)."""
        if account is None or not _SAFE.fullmatch(account) or not _SAFE.fullmatch(ref):
            return None
        finetune_id = await cast(Awaitable[bytes | None], self._redis.hget(finetune_names_key(account), ref))
        return await self._load(account, finetune_id.decode() if finetune_id is not None else ref)

    async def _load(self, account: str, finetune_id: str) -> Finetune | None:
        key = finetune_key(account, finetune_id)
        fields = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(key))
        meta = fields.pop(_META.encode(), None)
        if meta is None:
            return None
        finetune = msgspec.json.decode(meta, type=Finetune)
        files = tuple(name for name in FILES if name.encode() in fields)
        return msgspec.structs.replace(finetune, files=files)

    async def get(self, account: str, ref: str) -> Finetune:
        finetune = await self.find(account, ref)
        if finetune is None:
            raise _not_found(account, ref)
        return finetune

    async def list(self, account: str) -> list[Finetune]:
        _safe(account, "account")
        ids = await cast(Awaitable[list[bytes]], self._redis.hvals(finetune_names_key(account)))
        found = [await self._load(account, finetune_id.decode()) for finetune_id in ids]
        return sorted((f for f in found if f is not None), key=lambda f: f.created_at)

    async def add_file(self, account: str, ref: str, file_name: str, source: IO[bytes]) -> Finetune:
        """Validate and store one of the adapter's two files; the finetune as it is after."""
        if file_name not in FILES:
            raise bad_input(
                f"file_name {file_name!r} must be {CONFIG_FILE} or {WEIGHTS_FILE}", param="file_name"
            )
        finetune = await self.get(account, ref)
        if file_name in finetune.files:
            raise _refused(file_name, "it was uploaded already; assets cannot be changed")
        folder = self.folder(finetune)
        await asyncio.to_thread(
            store_file, folder, file_name, source, max_bytes=self.max_bytes, max_rank=self.max_rank
        )
        key = finetune_key(account, finetune.id)
        if not await cast(Awaitable[int], self._redis.exists(key)):  # deleted meanwhile: leave nothing behind
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise _not_found(account, ref)
        # One field per file: two uploads at once each add theirs without a read-modify-write.
        await cast(Awaitable[int], self._redis.hset(key, file_name, str(time.time())))
        return await self.get(account, finetune.id)

    async def delete(self, account: str, ref: str) -> Finetune:
        finetune = await self.get(account, ref)
        # Unusable first (Redis), then the files.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(finetune_names_key(account), finetune.name)
            pipe.delete(finetune_key(account, finetune.id))
            await pipe.execute()
        await asyncio.to_thread(shutil.rmtree, self.folder(finetune), True)
        return finetune
