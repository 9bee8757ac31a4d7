"""Admission: when a request may be sent, and when another async task may start.

The policies layer between the client and the transport: `Governor` is the protocol
the client talks to; `LocalGovernor` keeps the limits in this process, and
`nanobanana.fleet.RedisGovernor` shares them with every process using the same key.
"""

from nanobanana._admission._api import (
    DEFAULT_ACCOUNT_LIMIT,
    Governor,
    GovernorStats,
    JobPoller,
    Slot,
    TaskReservation,
)
from nanobanana._admission._choose import REDIS_SCHEMES, REDIS_URL_ENV, choose_governor
from nanobanana._admission._local import LocalGovernor

__all__ = [
    "DEFAULT_ACCOUNT_LIMIT",
    "REDIS_SCHEMES",
    "REDIS_URL_ENV",
    "Governor",
    "GovernorStats",
    "JobPoller",
    "LocalGovernor",
    "Slot",
    "TaskReservation",
    "choose_governor",
]
