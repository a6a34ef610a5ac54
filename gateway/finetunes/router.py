"""Routes of Cloudflare's finetune API (``client.ai.finetunes``, ``wrangler ai finetune``)."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, MediaType, Response, delete, get, post, route
from litestar.di import NamedDependency
from litestar.enums import HttpMethod, RequestEncodingType
from litestar.params import Body, FromPath, SkipValidation

from gateway.auth import authenticate
from gateway.decode import strict
from gateway.errors import CLOUDFLARE_ERRORS
from gateway.finetunes.protocol import (
    AssetEnvelope,
    DeletedEnvelope,
    DeletedResult,
    FinetuneCreate,
    FinetuneEnvelope,
    FinetuneListEnvelope,
    FinetuneResult,
)
from gateway.finetunes.serving import add_asset
from sluice.adapters import AdapterStore
from sluice.errors import bad_input

PATH = "/client/v4/accounts/{account_id:str}/ai/finetunes"


def _allow(methods: str) -> Response[None]:
    return Response(None, status_code=204, headers={"Allow": methods}, media_type=MediaType.TEXT)


class FinetunesController(Controller):
    path = PATH
    tags = ("Finetunes",)
    middleware = (authenticate,)

    # Litestar answers OPTIONS on a path with the methods of the first handler registered there
    # only (a controller registers its handlers one at a time, in name order): these two paths
    # list all theirs, and their names sort first so that they are registered first.
    @route("/", http_method=HttpMethod.OPTIONS, include_in_schema=False)
    async def allow_finetunes(self) -> Response[None]:
        return _allow("GET, OPTIONS, POST")

    @route("/{finetune:str}", http_method=HttpMethod.OPTIONS, include_in_schema=False)
    async def allow_finetune(self) -> Response[None]:
        return _allow("DELETE, GET, OPTIONS")

    @post(
        "/",
        status_code=200,
        summary="Register a LoRA adapter (its files come next)",
        responses=CLOUDFLARE_ERRORS,
    )
    async def create(
        self,
        account_id: FromPath[str],
        data: SkipValidation[FinetuneCreate],
        adapters: NamedDependency[AdapterStore],
    ) -> FinetuneEnvelope:
        body = strict(data, FinetuneCreate)
        if body.public:
            raise bad_input("public finetunes are not supported: adapters are private to their account",
                            param="public")  # fmt: skip
        finetune = await adapters.create(account_id, body.model, body.name, body.description)
        return FinetuneEnvelope(FinetuneResult.of(finetune))

    @get("/", summary="The account's finetunes", responses=CLOUDFLARE_ERRORS)
    async def list_finetunes(
        self, account_id: FromPath[str], adapters: NamedDependency[AdapterStore]
    ) -> FinetuneListEnvelope:
        return FinetuneListEnvelope([FinetuneResult.of(f) for f in await adapters.list(account_id)])

    @get("/public", summary="Public finetunes (none)", responses=CLOUDFLARE_ERRORS)
    async def list_public(self) -> FinetuneListEnvelope:
        # Cloudflare's cf-public-* adapters are theirs; this deployment publishes none.
        return FinetuneListEnvelope([])

    @get("/{finetune:str}", summary="One finetune, by id or name", responses=CLOUDFLARE_ERRORS)
    async def show(
        self, account_id: FromPath[str], finetune: FromPath[str], adapters: NamedDependency[AdapterStore]
    ) -> FinetuneEnvelope:
        return FinetuneEnvelope(FinetuneResult.of(await adapters.get(account_id, finetune)))

    @delete(
        "/{finetune:str}",
        status_code=200,
        summary="Delete a finetune and its files",
        responses=CLOUDFLARE_ERRORS,
    )
    async def remove(
        self, account_id: FromPath[str], finetune: FromPath[str], adapters: NamedDependency[AdapterStore]
    ) -> DeletedEnvelope:
        gone = await adapters.delete(account_id, finetune)
        return DeletedEnvelope(DeletedResult(id=gone.id, name=gone.name))


class FinetuneAssetsController(Controller):
    """Uploads, apart: their body limit is the adapter size limit, not the API's (app.py)."""

    path = PATH
    tags = ("Finetunes",)
    middleware = (authenticate,)

    @post(
        "/{finetune:str}/finetune-assets",
        status_code=200,
        summary="Upload adapter_config.json or adapter_model.safetensors (multipart file_name + file)",
        responses=CLOUDFLARE_ERRORS,
    )
    async def upload(
        self,
        account_id: FromPath[str],
        finetune: FromPath[str],
        data: Annotated[dict[str, Any], Body(media_type=RequestEncodingType.MULTI_PART)],
        adapters: NamedDependency[AdapterStore],
    ) -> AssetEnvelope:
        return await add_asset(adapters, account_id, finetune, data)
