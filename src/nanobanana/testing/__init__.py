"""A stateful simulator of the Nano Banana service, for tests, demos and offline work.

`Simulator` speaks the whole protocol (``GET /models``, ``GET /credits``,
``POST /generate`` in sync, stream and async mode, ``GET /generate?id=``) on a real
loopback socket, keeps accounts, credits and the per-account concurrency limit, serves
real PNG images from a second origin standing in for the CDN, and injects faults.

Example:
    >>> from nanobanana.testing import Simulator
    >>> with Simulator(credits=5) as sim:
    ...     sim.inject("429", path="/generate")
    ...     ...  # point any HTTP client at sim.base_url with sim.api_key

Prompt markers steer one call without code: ``[fail]`` (the generation fails),
``[unsafe]`` (the content-safety warning), ``[slow=2.5]`` (takes 2.5 s). For times
that vary without markers, give a range: ``Simulator(generation_time="0.5-2", seed=1)``.

For pytest, the plugin `nanobanana.testing.pytest_plugin` (registered automatically)
provides the ``nanobanana_sim`` and ``nanobanana_client`` fixtures.
"""

from nanobanana.testing._app import SimApp
from nanobanana.testing._catalogue import DEFAULT_MODELS, SimModel
from nanobanana.testing._clock import SimClock
from nanobanana.testing._config import SimulatorConfig
from nanobanana.testing._faults import DEFAULT_RANDOM_KINDS, FAULT_KINDS, Fault
from nanobanana.testing._faults import PRESETS as FAULT_PRESETS
from nanobanana.testing._hold import Hold
from nanobanana.testing._png import render_image
from nanobanana.testing._records import (
    GenerationRecord,
    LedgerEntry,
    RequestRecord,
    fingerprint,
)
from nanobanana.testing._serve import serve
from nanobanana.testing._simulator import Simulator
from nanobanana.testing._timing import GenerationTime

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_RANDOM_KINDS",
    "FAULT_KINDS",
    "FAULT_PRESETS",
    "Fault",
    "GenerationRecord",
    "GenerationTime",
    "Hold",
    "LedgerEntry",
    "RequestRecord",
    "SimApp",
    "SimClock",
    "SimModel",
    "Simulator",
    "SimulatorConfig",
    "fingerprint",
    "render_image",
    "serve",
]
