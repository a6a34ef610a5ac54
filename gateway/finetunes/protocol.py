"""Finetune types, in the shapes of the ``cloudflare`` SDK's ``types/ai/finetune*`` models."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from sluice.adapters import Finetune


class FinetuneCreate(msgspec.Struct, forbid_unknown_fields=True):
    """``POST …/ai/finetunes``: what ``client.ai.finetunes.create`` and wrangler send."""

    model: str
    name: str
    description: str = ""
    public: bool = False


class FinetuneResult(msgspec.Struct):
    id: str
    name: str
    model: str
    description: str
    public: bool
    created_at: datetime
    modified_at: datetime
    #: Beyond Cloudflare's fields: whether both files are in and valid, and which are not.
    ready: bool
    missing_files: list[str]

    @classmethod
    def of(cls, finetune: Finetune) -> FinetuneResult:
        return cls(
            id=finetune.id,
            name=finetune.name,
            model=finetune.model,
            description=finetune.description,
            public=finetune.public,
            created_at=utc(finetune.created_at),
            modified_at=utc(finetune.modified_at),
            ready=finetune.ready,
            missing_files=finetune.missing,
        )


class AssetResult(msgspec.Struct):
    """One uploaded file, as Cloudflare describes it."""

    id: str
    finetune_id: str
    file_name: str
    bucket_name: str
    created_at: datetime
    modified_at: datetime


class DeletedResult(msgspec.Struct):
    id: str
    name: str


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class FinetuneEnvelope(msgspec.Struct):
    result: FinetuneResult
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)


class FinetuneListEnvelope(msgspec.Struct):
    result: list[FinetuneResult]
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)


class AssetEnvelope(msgspec.Struct):
    result: AssetResult
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)


class DeletedEnvelope(msgspec.Struct):
    result: DeletedResult
    success: bool = True
    errors: list[object] = msgspec.field(default_factory=list)
    messages: list[object] = msgspec.field(default_factory=list)
