"""One worker process of a fleet test: a client sharing admission through Redis.

Run as ``python fleet_worker.py BASE_URL REDIS_URL NAMESPACE MODE COUNT [LEASE [ROUNDS]]``.
It imports everything, prints ``ready``, and then for each round waits for a line on
stdin (so that every worker starts at once), gathers COUNT generations in MODE
(``sync`` or ``async``), and prints one JSON line: how many completed, the errors, and
the governor's stats. Log records of the ``nanobanana`` logger at INFO and above go to
stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys

import attrs

from nanobanana import AsyncNanoBanana, PollPolicy
from nanobanana.fleet import RedisGovernor


async def main(  # noqa: PLR0917
    base_url: str, redis_url: str, namespace: str, mode: str, count: int, lease: float, rounds: int
) -> None:
    governor = RedisGovernor(
        redis_url, namespace=namespace, lease=lease, timeout=2.0, retry_interval=0.05
    )
    polls = PollPolicy(first_delay=0.05, max_interval=0.1, jitter=0.0)
    async with AsyncNanoBanana(
        api_key="nb_test_key", base_url=base_url, governor=governor, poll_policy=polls
    ) as client:

        async def one(i: int) -> object:
            if mode == "async":
                job = await client.submit(f"worker {os.getpid()} async {i}")
                return await job.wait()
            return await client.generate(f"worker {os.getpid()} sync {i}")

        await client.models()  # imports and a connection: no worker starts late
        print("ready", flush=True)
        for round_ in range(rounds):
            await asyncio.to_thread(sys.stdin.readline)
            work = (one(round_ * count + i) for i in range(count))
            results = await asyncio.gather(*work, return_exceptions=True)
            errors = [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)]
            report = {
                "completed": len(results) - len(errors),
                "errors": errors,
                "stats": attrs.asdict(client.governor_stats()),
            }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    logging.basicConfig(
        stream=sys.stderr, format="%(relativeCreated)d %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("nanobanana").setLevel(logging.INFO)
    base, redis_url, namespace, mode, count = sys.argv[1:6]
    lease = float(sys.argv[6]) if len(sys.argv) > 6 else 2.0
    rounds = int(sys.argv[7]) if len(sys.argv) > 7 else 1
    asyncio.run(main(base, redis_url, namespace, mode, int(count), lease, rounds))
