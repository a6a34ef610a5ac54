"""From a multipart upload to :meth:`AdapterStore.add_file`, and its answer."""

from __future__ import annotations

import time
from typing import Any

from litestar.datastructures import UploadFile

from gateway.finetunes.protocol import AssetEnvelope, AssetResult, utc
from sluice.adapters import AdapterStore
from sluice.errors import bad_input


async def add_asset(adapters: AdapterStore, account: str, ref: str, form: dict[str, Any]) -> AssetEnvelope:
    file_name, upload = form.get("file_name"), form.get("file")
    if not isinstance(file_name, str):
        raise bad_input("the form needs a file_name field (adapter_config.json or adapter_model.safetensors)",
                        param="file_name")  # fmt: skip
    if not isinstance(upload, UploadFile):
        raise bad_input("the form needs a file field holding the file", param="file")
    try:
        finetune = await adapters.add_file(account, ref, file_name, upload.file)
    finally:
        await upload.close()
    now = utc(time.time())
    return AssetEnvelope(
        AssetResult(
            id=f"{finetune.id}/{file_name}",
            finetune_id=finetune.id,
            file_name=file_name,
            bucket_name=str(adapters.folder(finetune)),
            created_at=now,
            modified_at=now,
        )
    )
