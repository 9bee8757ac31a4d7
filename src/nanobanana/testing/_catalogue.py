"""The simulator's model catalogue, as served by ``GET /models``."""

from __future__ import annotations

from typing import Any

import attrs

from nanobanana.testing._timing import GenerationTime, optional_generation_time

__all__ = ["DEFAULT_MODEL", "DEFAULT_MODELS", "SimModel"]


@attrs.frozen(kw_only=True)
class SimModel:
    """One model of the simulated catalogue.

    Attributes:
        name: The id that ``selectedModel`` names.
        display_name: The human name.
        credits_cost: Credits per image (before reference-image extras).
        supports_image_input: Whether ``referenceImageUrls`` are accepted.
        supports_aspect_ratio: Whether ``aspectRatio`` other than ``default`` is accepted.
        requires_pro: Whether only pro accounts may use it (others get 403).
        generation_time: How long a generation takes with this model (seconds or a
            range, as `GenerationTime.of` reads it); ``None`` uses the simulator's
            ``generation_time``.
    """

    name: str
    display_name: str
    credits_cost: int = 1
    supports_image_input: bool = True
    supports_aspect_ratio: bool = True
    requires_pro: bool = False
    generation_time: GenerationTime | None = attrs.field(
        default=None, converter=optional_generation_time
    )

    def to_json(self) -> dict[str, Any]:
        """The model as the service's ``GET /models`` lists it (overview docs, section 5)."""
        return {
            "name": self.name,
            "displayName": self.display_name,
            "creditsCost": self.credits_cost,
            "supportsImageInput": self.supports_image_input,
            "supportsAspectRatio": self.supports_aspect_ratio,
            "requiresPro": self.requires_pro,
        }


# "selectedModel ... defaults to nano-banana" and "The default model costs 1 credit"
# (overview docs), so the docs' model stays in the catalogue and is the default.
DEFAULT_MODEL = "nano-banana"

# The ids the live service returned on 2026-03-25 (api-reference-agent-notes.md). Costs
# and flags beyond the default model are not published: these are plausible stand-ins.
DEFAULT_MODELS: tuple[SimModel, ...] = (
    SimModel(name="nano-banana", display_name="Nano Banana", credits_cost=1),
    SimModel(name="gemini-2.5-flash-image", display_name="Gemini 2.5 Flash Image", credits_cost=1),
    SimModel(name="nanobanan-2", display_name="Nano Banana 2", credits_cost=2),
    SimModel(name="nanobanan-2-2k", display_name="Nano Banana 2 (2K)", credits_cost=3),
    SimModel(name="seedream-5.0-2k", display_name="Seedream 5.0 (2K)", credits_cost=2),
    SimModel(
        name="nanobanan2&pro",
        display_name="Nano Banana 2 Pro",
        credits_cost=4,
        requires_pro=True,
    ),
)
