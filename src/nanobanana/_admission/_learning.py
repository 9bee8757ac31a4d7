"""Learning the account's limit on requests in flight, one proven step at a time.

The limit starts at the documented default (1) unless ``max_concurrency`` says it.
The server states it in a 429 (body ``limit``, header ``X-RateLimit-Limit``): then it is
known, and never exceeded again. Until then the learner probes one higher, but only on
proof that the current limit is really used at the server:

- a success raises the limit only when the request was admitted at the current limit
  (``level >= limit``): successes of requests admitted under a lower limit prove
  nothing more, and letting each of them raise it is how a client once had 4 requests
  in flight for a limit of 2;
- only a request the server holds for a while (a sync or stream generation) proves a
  level, and only when the others in flight beside it had been sent at least half its
  own duration before it ended, so that the server surely held them together. Polls,
  submits and credit checks are answered in an instant: a batch of them never shows
  the server holding several at once, and letting them count is how a batch of async
  jobs once raised the limit to 11 for a real limit of 3, with the server never
  seeing more than 1;
- the server refuses a request beyond the limit at once (429), so a request still
  unanswered after a moment was admitted: when ``limit`` requests have all been in
  flight for `proof_age` (0.25 s, or three times the fastest answer seen, if more),
  the server is holding that many at once, and the learner probes one higher without
  waiting for any of them to end. Real generations take 10-60 s: learning a limit of 5
  then takes about a second, not four generations;
- a probe that the server refuses without stating the limit ends the probing one
  below it. So each step costs at most one 429.

What a client cannot see: a request whose answer has arrived but not been read yet (a
loaded machine) still looks in flight. A probe may then find the server with one
fewer and pass without a 429, leaving the limit one above the real one, unknown; the
next time that many are in flight, one 429 states the real limit. One step, never
more: the next probe needs that many held at once, which the server refuses.

The Redis governor applies the same rules in its Lua scripts (`nanobanana._admission._lua`).
"""

from __future__ import annotations

import attrs

from nanobanana._admission._api import DEFAULT_ACCOUNT_LIMIT

__all__ = ["PROOF_AGE", "LimitLearner", "proof_age"]

#: A request the server has not refused within this long was admitted (it refuses at once).
PROOF_AGE = 0.25


def proof_age(fastest_answer: float | None) -> float:
    """How long requests must be in flight to show they were admitted.

    `PROOF_AGE`, or three times the fastest answer seen (a slow link's round trip),
    whichever is longer.
    """
    return PROOF_AGE if fastest_answer is None else max(PROOF_AGE, 3 * fastest_answer)


@attrs.define(kw_only=True)
class LimitLearner:
    """The account's limit as far as it is known, and the probing rules above.

    Attributes:
        cap: the most this client sends at once whatever it learns
            (``max_concurrency``, else the connection pool's size).
        limit: requests allowed in flight now.
        known: stated by the server (or fixed by ``max_concurrency``).
        ceiling: probing stops here (a refusal that stated no limit lowers it).
    """

    cap: int
    limit: int
    known: bool
    ceiling: int

    @classmethod
    def create(cls, *, max_concurrency: int | None, ceiling: int) -> LimitLearner:
        """A learner for ``max_concurrency`` (None: learn, starting at the default)."""
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        cap = min(max_concurrency, ceiling) if max_concurrency else ceiling
        fixed = max_concurrency is not None
        return cls(
            cap=cap,
            limit=cap if fixed else min(DEFAULT_ACCOUNT_LIMIT, cap),
            known=fixed,
            ceiling=cap,
        )

    def stated(self, limit: int) -> bool:
        """The server stated ``limit``; return whether the limit changed."""
        if limit < 1:
            return False
        self.known = True
        new = min(limit, self.cap)
        changed = new != self.limit
        self.limit = new
        return changed

    def proves(self, *, level: int, held: int, waiting: bool) -> bool:
        """Whether a success admitted at ``level``, beside ``held`` long-held others, probes up.

        ``held`` counts the other requests in flight that were sent at least half this
        one's duration before it ended.
        """
        return (
            not self.known
            and waiting
            and level >= self.limit
            and held >= self.limit - 1
            and self.limit < min(self.ceiling, self.cap)
        )

    def may_probe(self, *, waiting: bool) -> bool:
        """Whether the limit may go up at all (unknown, below the ceilings, and needed)."""
        return not self.known and waiting and self.limit < min(self.ceiling, self.cap)

    def probe(self) -> None:
        """Allow one more request in flight."""
        self.limit += 1

    def own_refusal(self, level: int) -> bool:
        """Whether a 429 for a request admitted at ``level`` is our own doing.

        While the limit is unknown, a 429 is the probe overshooting. Once known, a 429
        within the limit comes from load this client cannot see (another process or
        program using the key): a cool-down, not a lesson.
        """
        return not self.known or level > self.limit

    def refused(self, *, level: int) -> None:
        """A 429 that stated no limit, for a request admitted at ``level``."""
        if self.known:
            return
        self.ceiling = max(1, min(self.ceiling, level - 1))
        self.limit = max(1, min(self.limit, self.ceiling))
