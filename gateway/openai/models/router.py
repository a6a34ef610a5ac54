"""``GET /models`` and ``GET /models/{model}``: what this deployment serves, and what really runs."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from gateway.caller import Caller
from gateway.errors import OPENAI_ERRORS
from gateway.openai.models.protocol import Model, ModelList, ServedBy
from sluice.adapters import AdapterStore, Finetune
from sluice.config import ServedModel, Settings
from sluice.errors import no_such_model

#: Fixed so that listing models is stable across restarts and replicas.
_CREATED = 1721692800  # 2024-07-23, the Llama 3.1 release


def model_card(served: ServedModel) -> Model:
    return Model(
        id=served.name,
        created=_CREATED,
        owned_by="sluice",
        served_by=ServedBy(engine=served.engine, model=served.model, description=served.description),
    )


def adapter_card(base: ServedModel, finetune: Finetune) -> Model:
    served_by = ServedBy(engine=base.engine, model=base.model, description=finetune.description)
    return Model(
        id=finetune.name,
        created=int(finetune.created_at),
        owned_by=finetune.account,
        served_by=served_by,
        parent=base.name,
    )


class ModelsController(Controller):
    path = "/models"
    tags = ("OpenAI",)

    @get("/", summary="List the served models and the caller's LoRA adapters", responses=OPENAI_ERRORS)
    async def list_models(
        self,
        settings: NamedDependency[Settings],
        adapters: NamedDependency[AdapterStore],
        caller: NamedDependency[Caller],
    ) -> ModelList:
        cards = [model_card(served) for served in settings.models]
        if caller.account is not None:  # each usable as `model` (OpenAI's fine-tuned-model style)
            listed = await adapters.list(caller.account)
            ready = [f for f in listed if f.ready and f.model in settings.model_names]
            cards += [adapter_card(settings.served(f.model), f) for f in ready]
        return ModelList(data=cards)

    @get("/{model:path}", summary="Describe one served model or LoRA adapter", responses=OPENAI_ERRORS)
    async def get_model(
        self,
        model: FromPath[str],
        settings: NamedDependency[Settings],
        adapters: NamedDependency[AdapterStore],
        caller: NamedDependency[Caller],
    ) -> Model:
        """As listed: a served model, or one of the caller's ready adapters by its name."""
        name = model.lstrip("/")
        if name in settings.model_names:
            return model_card(settings.served(name))
        found = await adapters.find(caller.account, name)
        if found is None or not found.ready or found.model not in settings.model_names:
            raise no_such_model(name)
        return adapter_card(settings.served(found.model), found)
