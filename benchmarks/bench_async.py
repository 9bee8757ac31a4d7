"""Async jobs at scale, with default settings: 200 jobs against the server's task cap.

Run as ``python benchmarks/bench_async.py [REPEATS] [JOBS]``. A simulator served over a
socket from this process stands in for the service as the issue found it: account
limit 3, async task cap 10, 1 s generations. A client with DEFAULT settings
(``AsyncNanoBanana()``, nothing tuned) runs JOBS (200) jobs in two shapes:

- ``gather(submit + wait)``: one coroutine per prompt that submits, then waits;
- ``submit all, then wait all``: the shape of the docs' old batch example.

The ideal makespan is what the cap allows: ceil(JOBS / 10) x 1 s = 20 s. Reported:
makespan / ideal (the target is 1.3 at most), completed jobs, failures, the 503s and
429s the simulator sent. Median and range of REPEATS runs (default 3).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import sys
import time

LIMIT, CAP, GENERATION_TIME = 3, 10, 1.0
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
JOBS = int(sys.argv[2]) if len(sys.argv) > 2 else 200


async def gather_submit_and_wait(client, prompts):
    async def one(prompt):
        job = await client.submit(prompt)
        return await job.wait()

    return await asyncio.gather(*(one(p) for p in prompts), return_exceptions=True)


async def submit_all_then_wait_all(client, prompts):
    jobs = await asyncio.gather(*(client.submit(p) for p in prompts), return_exceptions=True)
    waits = [j.wait() for j in jobs if not isinstance(j, BaseException)]
    done = await asyncio.gather(*waits, return_exceptions=True)
    return [j for j in jobs if isinstance(j, BaseException)] + list(done)


async def run(shape):
    from nanobanana import AsyncNanoBanana, Generation  # noqa: PLC0415
    from nanobanana.testing import Simulator  # noqa: PLC0415

    with Simulator(
        concurrency_limit=LIMIT,
        max_async_tasks=CAP,
        generation_time=GENERATION_TIME,
        credits=100_000,
    ) as sim:
        async with AsyncNanoBanana(api_key=sim.api_key, base_url=sim.base_url) as client:
            prompts = [f"job {i}" for i in range(JOBS)]
            start = time.perf_counter()
            results = await shape(client, prompts)
            makespan = time.perf_counter() - start
        statuses = [r.status for r in sim.requests]
    completed = sum(isinstance(r, Generation) for r in results)
    return {
        "ratio": makespan / (math.ceil(JOBS / CAP) * GENERATION_TIME),
        "makespan": makespan,
        "completed": completed,
        "failures": JOBS - completed,
        "503s": statuses.count(503),
        "429s": statuses.count(429),
    }


def main():
    ideal = math.ceil(JOBS / CAP) * GENERATION_TIME
    print(
        f"{JOBS} async jobs, default client settings; account limit {LIMIT}, task cap {CAP}, "
        f"{GENERATION_TIME:g} s generations: ideal makespan {ideal:.0f} s; "
        f"median [min-max] of {REPEATS} runs"
    )
    print(f"{'shape':<28} {'makespan / ideal':>20} {'completed':>10} {'503s':>6} {'429s':>6}")
    for name, shape in (
        ("gather(submit + wait)", gather_submit_and_wait),
        ("submit all, then wait all", submit_all_then_wait_all),
    ):
        runs = [asyncio.run(run(shape)) for _ in range(REPEATS)]
        ratios = [r["ratio"] for r in runs]
        print(
            f"{name:<28} {statistics.median(ratios):>8.2f} [{min(ratios):.2f}-{max(ratios):.2f}] "
            f"{min(r['completed'] for r in runs):>6}/{JOBS} "
            f"{statistics.median([r['503s'] for r in runs]):>6.0f} "
            f"{statistics.median([r['429s'] for r in runs]):>6.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
