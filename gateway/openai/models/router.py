"""``GET /models`` and ``GET /models/{model}``: what this deployment serves, and what really runs."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.errors import OPENAI_ERRORS
from gateway.openai.models.protocol import Model, ModelList, ServedBy
from sluice.config import ServedModel, Settings

#: Fixed so that listing models is stable across restarts and replicas.
_CREATED = 1721692800  # 2024-07-23, the Llama 3.1 release


def model_card(served: ServedModel) -> Model:
    return Model(
        id=served.name,
        created=_CREATED,
        owned_by="sluice",
        served_by=ServedBy(engine=served.engine, model=served.model, description=served.description),
    )


class ModelsController(Controller):
    path = "/models"
    tags = ("OpenAI",)

    @get("/", summary="List the served models", responses=OPENAI_ERRORS)
    async def list_models(self, settings: NamedDependency[Settings]) -> ModelList:
        return ModelList(data=[model_card(served) for served in settings.models])

    @get("/{model:path}", summary="Describe one served model", responses=OPENAI_ERRORS)
    async def get_model(self, model: FromPath[str], settings: NamedDependency[Settings]) -> Model:
        return model_card(settings.served(model.lstrip("/")))
