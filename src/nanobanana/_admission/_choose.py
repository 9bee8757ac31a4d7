"""Choosing a client's governor, once, when the client is made."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from nanobanana._admission._local import LocalGovernor

if TYPE_CHECKING:
    from nanobanana._admission._api import Governor
    from nanobanana._clock import Clock
    from nanobanana._config import Secret

__all__ = ["REDIS_SCHEMES", "REDIS_URL_ENV", "choose_governor"]

#: The default shared governor's Redis URL, for the client and the CLI.
REDIS_URL_ENV = "NANOBANANA_REDIS_URL"
#: The URL schemes of a Redis governor (redis-py's ``from_url``).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def choose_governor(
    governor: Any,
    *,
    api_key: Secret | None,
    base_url: str,
    max_concurrency: int | None,
    ceiling: int,
    clock: Clock,
) -> Governor:
    """The governor for ``AsyncNanoBanana(governor=...)``.

    None: ``$NANOBANANA_REDIS_URL`` when set, else this process. ``"local"``: this
    process, whatever the environment says. A Redis URL or a
    `nanobanana.fleet.RedisGovernor`: shared through Redis.
    """
    if governor is None:
        governor = os.environ.get(REDIS_URL_ENV, "").strip() or "local"
    if governor == "local":
        return LocalGovernor(max_concurrency=max_concurrency, ceiling=ceiling, clock=clock)
    from nanobanana.fleet import RedisGovernor  # noqa: PLC0415 - only for a shared governor

    if isinstance(governor, str):
        if not governor.startswith(REDIS_SCHEMES):
            raise ValueError(
                "governor must be None, 'local', a redis://, rediss:// or unix:// URL, "
                "or a nanobanana.fleet.RedisGovernor"
            )
        governor = RedisGovernor(governor)
    if not isinstance(governor, RedisGovernor):
        raise TypeError(
            "governor must be None, 'local', a Redis URL or a nanobanana.fleet.RedisGovernor, "
            f"not {type(governor).__name__}"
        )
    return governor.bind(
        api_key=api_key,
        base_url=base_url,
        max_concurrency=max_concurrency,
        ceiling=ceiling,
        clock=clock,
    )
