"""nanobanana: the asyncio-native client for the Nano Banana image-generation API.

Example:
    ```python
    import asyncio
    from nanobanana import AsyncNanoBanana

    async def main() -> None:
        async with AsyncNanoBanana() as client:
            generation = await client.generate("a cute orange cat on a windowsill")
            print(generation.image_urls)

    asyncio.run(main())
    ```
"""

from typing import TYPE_CHECKING, Any

from nanobanana._admission import GovernorStats
from nanobanana._batch._values import BatchRequest, BatchResult, BatchStats
from nanobanana._client import AsyncNanoBanana
from nanobanana._clock import Clock, FakeClock, SystemClock
from nanobanana._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BudgetExceededError,
    ContentSafetyError,
    DownloadError,
    GenerationFailedError,
    InsufficientCreditsError,
    InternalServerError,
    JobTimeoutError,
    MissingAPIKeyError,
    NanoBananaError,
    NotFoundError,
    PermissionDeniedError,
    ProxyError,
    RateLimitError,
    ServerBusyError,
    SSETooLargeError,
    StreamIdleError,
    TLSCertificateError,
    UnexpectedResponseError,
    UnknownModelError,
)
from nanobanana._jobs import Job, PollPolicy
from nanobanana._models import Generation, GenerationStatus, Model, ProgressEvent
from nanobanana._retry import RetryPolicy
from nanobanana._stats import ClientStats
from nanobanana._version import __version__

if TYPE_CHECKING:
    from nanobanana._batch._engine import Batch
    from nanobanana._stream import GenerationStream

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncNanoBanana",
    "AuthenticationError",
    "BadRequestError",
    "Batch",
    "BatchRequest",
    "BatchResult",
    "BatchStats",
    "BudgetExceededError",
    "ClientStats",
    "Clock",
    "ContentSafetyError",
    "DownloadError",
    "FakeClock",
    "Generation",
    "GenerationFailedError",
    "GenerationStatus",
    "GenerationStream",
    "GovernorStats",
    "InsufficientCreditsError",
    "InternalServerError",
    "Job",
    "JobTimeoutError",
    "MissingAPIKeyError",
    "Model",
    "NanoBananaError",
    "NotFoundError",
    "PermissionDeniedError",
    "PollPolicy",
    "ProgressEvent",
    "ProxyError",
    "RateLimitError",
    "RetryPolicy",
    "SSETooLargeError",
    "ServerBusyError",
    "StreamIdleError",
    "SystemClock",
    "TLSCertificateError",
    "UnexpectedResponseError",
    "UnknownModelError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The stream machinery (anyio, httpx-sse) loads on first use: `import nanobanana`
    # stays within 50 ms of `import httpx`.
    if name == "GenerationStream":
        from nanobanana._stream import GenerationStream  # noqa: PLC0415

        GenerationStream.__module__ = "nanobanana"
        return GenerationStream
    if name == "Batch":  # the batch engine loads on first use, like the stream's
        from nanobanana._batch._engine import Batch  # noqa: PLC0415

        Batch.__module__ = "nanobanana"
        return Batch
    raise AttributeError(f"module 'nanobanana' has no attribute {name!r}")


# Public names report this package, not the private module (httpx does the same).
for _name in __all__:
    _obj = globals().get(_name)
    if isinstance(_obj, type):
        _obj.__module__ = "nanobanana"
del _name, _obj
