"""How long simulated generations take: a fixed time, or a range to draw times from."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    import random

__all__ = ["INSTANT", "GenerationTime", "generation_time", "optional_generation_time"]

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SPEC = re.compile(rf"{_NUMBER}(?:-{_NUMBER})?(?:@{_NUMBER})?")


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{what} must be a finite number of seconds, 0 or more: {value!r}")
    return seconds


@attrs.frozen(kw_only=True)
class GenerationTime:
    """How long generations take, in seconds: from ``low`` to ``high``.

    Equal bounds are a fixed time. Otherwise each generation draws its time at random:
    uniformly, or, with ``mode``, from a triangular distribution that peaks there (most
    near ``mode``, a few out to ``high``, as real generations "take 10-60 seconds").
    The draws come from the simulator's own random source, so a simulator built with
    a ``seed`` gives the same sequence of generations the same times.

    Everything that sets a generation time (``Simulator(generation_time=...)``,
    ``set_generation_time``, ``nanobanana simulate --generation-time``, the admin API)
    accepts what `of` reads: ``2``, ``"0.5-2"``, ``"10-60@20"``, ``(0.5, 2)``.

    Example:
        >>> GenerationTime.of("0.5-2")
        GenerationTime(low=0.5, high=2.0, mode=None)
    """

    low: float
    high: float
    mode: float | None = None

    def __attrs_post_init__(self) -> None:
        _seconds(self.low, "generation_time")
        _seconds(self.high, "generation_time")
        if self.low > self.high:
            raise ValueError(f"generation_time: the range {self.low:g}-{self.high:g} is reversed")
        if self.mode is not None:
            _seconds(self.mode, "generation_time's mode")
            if not self.low <= self.mode <= self.high:
                raise ValueError(
                    f"generation_time: the mode {self.mode:g} is outside {self.low:g}-{self.high:g}"
                )

    @classmethod
    def fixed(cls, seconds: float) -> GenerationTime:
        """Every generation takes ``seconds``."""
        value = _seconds(seconds, "generation_time")
        return cls(low=value, high=value)

    @classmethod
    def of(cls, value: object) -> GenerationTime:
        """Read a generation time given in any of the accepted forms.

        ``value`` is a `GenerationTime`; a number of seconds; a string ``"S"``,
        ``"LOW-HIGH"`` (uniform) or ``"LOW-HIGH@MODE"`` (triangular); a pair
        ``(low, high)``; or a mapping with ``low``, ``high`` and optionally ``mode``
        (or ``seconds``, as the admin API answers).

        Raises:
            ValueError: a negative, reversed or unreadable time.
            TypeError: a value of another kind.
        """
        if isinstance(value, GenerationTime):
            return value
        if isinstance(value, str):
            return cls._parse(value)
        if isinstance(value, Mapping):
            if "low" in value or "high" in value:
                low = _seconds(value.get("low", 0.0), "generation_time's low")
                high = _seconds(value.get("high", low), "generation_time's high")
                mode = value.get("mode")
                return cls(
                    low=low,
                    high=high,
                    mode=None if mode is None else _seconds(mode, "generation_time's mode"),
                )
            if "seconds" in value:
                return cls.of(value["seconds"])
            raise ValueError("generation_time: give seconds, or low and high")
        if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
            if len(value) != 2:
                raise ValueError(f"generation_time: a range is (low, high), not {value!r}")
            low, high = (_seconds(v, "generation_time") for v in value)
            return cls(low=low, high=high)
        # A number, or a TypeError that says what was given instead.
        return cls.fixed(value)  # type: ignore[arg-type]

    @classmethod
    def _parse(cls, text: str) -> GenerationTime:
        match = _SPEC.fullmatch(text.replace(" ", ""))
        if match is None:
            raise ValueError(
                f"generation_time must be seconds (2), a range (0.5-2) or a range with "
                f"a mode (10-60@20), not {text!r}"
            )
        low, high, mode = match.groups()
        return cls(
            low=float(low),
            high=float(high if high is not None else low),
            mode=None if mode is None else float(mode),
        )

    @property
    def is_fixed(self) -> bool:
        """Whether every generation takes the same time."""
        return self.low == self.high

    def draw(self, rng: random.Random) -> float:
        """One generation's time (a fixed time draws nothing from ``rng``)."""
        if self.is_fixed:
            return self.low
        if self.mode is None:
            return rng.uniform(self.low, self.high)
        return rng.triangular(self.low, self.high, self.mode)

    def __str__(self) -> str:
        if self.is_fixed:
            return f"{self.low:g}"
        text = f"{self.low:g}-{self.high:g}"
        return text if self.mode is None else f"{text}@{self.mode:g}"

    def to_json(self) -> dict[str, Any]:
        """As the admin API shows it: ``seconds`` (a number, or the range as text) and bounds."""
        seconds: float | str = self.low if self.is_fixed else str(self)
        return {"seconds": seconds, "low": self.low, "high": self.high, "mode": self.mode}


#: Generations that take no time (the simulator's default).
INSTANT = GenerationTime.fixed(0.0)


def generation_time(value: object) -> GenerationTime:
    """`GenerationTime.of`, as a function (an attrs converter)."""
    return GenerationTime.of(value)


def optional_generation_time(value: object) -> GenerationTime | None:
    """`GenerationTime.of`, or None for None (an attrs converter)."""
    return None if value is None else GenerationTime.of(value)
