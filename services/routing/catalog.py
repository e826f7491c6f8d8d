"""The in-memory catalog and candidate selection; pure logic, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from aggregator.openai.v1 import model_pb2
from aggregator.routing.v1 import route_pb2
from services.core.errors import GatewayError, Reason, quote

# Which model types serve an endpoint's kind: legacy completions also run on chat models (as
# vLLM and other OpenAI-compatible servers allow); adapters refuse where the provider cannot.
SERVES: dict[str, tuple[str, ...]] = {"completion": ("completion", "chat")}


def supported_parameters(kind: str, model_type: str) -> tuple[str, ...]:
    """The request parameters the first route's provider honours (chat models; OpenRouter's
    `supported_parameters`). The adapters declare them; this reads their static tables."""
    if model_type != "chat":
        return ()
    from services.adapters.capabilities import supported_chat_parameters

    return supported_chat_parameters(kind)


@dataclass(frozen=True, slots=True)
class CatalogModel:
    """A public model id and its candidates in order."""

    id: str
    type: str
    context_window: int
    created: int
    candidates: tuple[route_pb2.RouteCandidate, ...]

    def to_proto(self) -> model_pb2.Model:
        first = self.candidates[0]
        return model_pb2.Model(
            id=self.id,
            object="model",
            created=self.created,
            owned_by=first.endpoint.provider,
            type=self.type,
            context_window=self.context_window,
            max_output_tokens=first.max_output_tokens,
            pricing=model_pb2.ModelPricing(
                input_per_1k=first.input_per_1k, output_per_1k=first.output_per_1k,
                per_image=first.per_image or None,
            ),
            supported_parameters=supported_parameters(first.endpoint.kind, self.type),
        )


class Catalog:
    """Models by id: the configured ids and every "<provider>/<upstream model>" route id."""

    def __init__(self, models: list[CatalogModel], providers: list[model_pb2.Provider]) -> None:
        self._models: dict[str, CatalogModel] = {}
        for model in models:
            self._models[model.id] = model
        for model in models:
            for candidate in model.candidates:
                route_id = f"{candidate.endpoint.provider}/{candidate.upstream_model}"
                if route_id not in self._models:
                    direct = route_pb2.RouteCandidate()
                    direct.CopyFrom(candidate)
                    direct.public_model = route_id
                    self._models[route_id] = CatalogModel(
                        route_id, model.type, model.context_window, model.created, (direct,)
                    )
        self.providers = tuple(providers)

    def models(self) -> list[CatalogModel]:
        return list(self._models.values())

    def get(self, model_id: str) -> CatalogModel:
        model = self._models.get(model_id)
        if model is None:
            raise GatewayError(
                Reason.MODEL_NOT_FOUND,
                f"The model {quote(model_id, '`')} does not exist or you do not have access to it.",
                param="model",
            )
        return model

    def resolve(self, model_id: str, fallbacks: list[str], model_type: str) -> list[route_pb2.RouteCandidate]:
        """Candidates for `model_id`, then for each fallback model, without repeats."""
        if not model_id:
            raise GatewayError(Reason.INVALID_REQUEST, "you must provide a model parameter", param="model")
        candidates: list[route_pb2.RouteCandidate] = []
        seen: set[tuple[str, str]] = set()
        for index, wanted in enumerate([model_id, *fallbacks]):
            model = self.get(wanted)
            if model_type and model.type not in SERVES.get(model_type, (model_type,)):
                raise GatewayError(
                    Reason.INVALID_REQUEST,
                    f"The model {quote(wanted, '`')} is a {model.type} model and cannot serve this endpoint.",
                    param="model" if index == 0 else "models",
                )
            for candidate in model.candidates:
                key = (candidate.endpoint.provider, candidate.upstream_model)
                if key not in seen:
                    seen.add(key)
                    candidates.append(candidate)
        return candidates
