"""The simulator's settings, as one frozen value."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from nanobanana.testing._catalogue import DEFAULT_MODELS, SimModel
from nanobanana.testing._timing import INSTANT, GenerationTime, generation_time

__all__ = ["URL_TTL", "SimulatorConfig"]

# "Generated image URLs are valid for 15 days" (overview docs, section 7).
URL_TTL = 15 * 24 * 3600.0


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive")


def _models(models: Iterable[SimModel]) -> tuple[SimModel, ...]:
    return tuple(models)


@attrs.frozen(kw_only=True)
class SimulatorConfig:
    """Everything a `Simulator` can be told at construction (see its docstring)."""

    api_key: str = "nb_test_key"
    credits: int = 100
    api_access: bool = True
    concurrency_limit: int = attrs.field(default=1, validator=_positive)
    pro: bool = False
    generation_time: GenerationTime = attrs.field(default=INSTANT, converter=generation_time)
    heartbeat_interval: float = attrs.field(default=15.0, validator=_positive)
    seed: int | None = None
    models: tuple[SimModel, ...] = attrs.field(default=DEFAULT_MODELS, converter=_models)
    default_model: str = "nano-banana"
    max_quantity: int = attrs.field(default=4, validator=_positive)
    max_async_tasks: int = attrs.field(default=10, validator=_positive)
    retry_after: str | None = "1"
    busy_retry_after: str | None = None
    url_ttl: float = attrs.field(default=URL_TTL, validator=_positive)
    stream_event_ids: bool = False
    image_size: int = attrs.field(default=64, validator=_positive)
    clock_start: float | None = None
    admin: bool = True

    def __attrs_post_init__(self) -> None:
        if not any(model.name == self.default_model for model in self.models):
            raise ValueError(f"default_model {self.default_model!r} is not in the catalogue")

    def model(self, name: str) -> SimModel | None:
        """The catalogue entry called ``name``, if any."""
        for model in self.models:
            if model.name == name:
                return model
        return None
