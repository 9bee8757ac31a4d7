"""A fleet of worker processes sharing one API key: utilization, 429s, failures.

Run as ``python benchmarks/bench_fleet.py [REPEATS]`` with ``redis-server`` on PATH.
It starts its own redis-server on a free loopback port and a simulator (account limit
2, 0.5 s generations) served over a socket from this process, then for W = 4 and 8
worker processes, each gathering sync generations (32 in all), measures:

- the makespan, from the first worker's start to the last one's end;
- utilization = ideal makespan / measured, where the ideal is what the account's limit
  allows: 32 generations x 0.5 s / 2 in flight = 8 s;
- the 429s the simulator sent, the failures, and the most requests of the key the
  simulator was handling at once (refused ones included).

Each worker makes one call before the clock starts (imports, connections: a fleet
runs for long, its set-up is not admission). Each configuration runs with the Redis
governor (shared, learning the limit from scratch: a fresh namespace per run) and, for
comparison in the same run, with each worker's own in-process governor (what every
process had before). Figures are the
median and range of REPEATS runs (default 3): the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

LIMIT = 2
GENERATION_TIME = 0.5
TOTAL = 32
REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--worker" else 3


async def worker(base_url: str, governor: str, namespace: str, count: int) -> None:
    from nanobanana import AsyncNanoBanana  # noqa: PLC0415
    from nanobanana.fleet import RedisGovernor  # noqa: PLC0415

    chosen = RedisGovernor(governor, namespace=namespace) if governor != "local" else "local"
    async with AsyncNanoBanana(api_key="nb_test_key", base_url=base_url, governor=chosen) as c:
        # Warm up (imports, the HTTP and Redis connections, the scripts) before the clock
        # starts: a fleet runs for long, its first call's set-up is not admission.
        await c.credits()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        start = time.time()
        results = await asyncio.gather(
            *(c.generate(f"bench {i}") for i in range(count)), return_exceptions=True
        )
        end = time.time()
        failures = [type(r).__name__ for r in results if isinstance(r, BaseException)]
        print(json.dumps({"start": start, "end": end, "failures": failures}), flush=True)


def run_fleet(sim, workers: int, governor: str) -> dict:
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    before = len(sim.requests)
    peak_before = sim.peak_in_flight()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                sim.base_url,
                governor,
                namespace,
                str(TOTAL // workers),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        proc.stdin.write("\n")
        proc.stdin.flush()
    reports = [
        json.loads(proc.communicate(timeout=300)[0].strip().splitlines()[-1]) for proc in procs
    ]
    makespan = max(r["end"] for r in reports) - min(r["start"] for r in reports)

    ideal = TOTAL * GENERATION_TIME / LIMIT
    requests = sim.requests[before:]
    return {
        "utilization": ideal / makespan,
        "makespan": makespan,
        "429s": sum(r.status == 429 for r in requests),
        "failures": sum(len(r["failures"]) for r in reports),
        "peak": sim.peak_in_flight() if sim.peak_in_flight() > peak_before else None,
    }


def main() -> None:
    from nanobanana.testing import Simulator  # noqa: PLC0415
    from redis_support import RedisServer  # noqa: PLC0415

    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench_fleet.py needs redis-server on PATH (Debian: apt-get install redis-server)")
    redis = RedisServer(binary=binary).start()
    print(
        f"account limit {LIMIT}, {GENERATION_TIME} s generations, {TOTAL} sync generations "
        f"per run, ideal makespan {TOTAL * GENERATION_TIME / LIMIT:.1f} s; "
        f"median [min-max] of {REPEATS} runs"
    )
    print(f"{'workers':>7} {'governor':<10} {'utilization':>22} {'429s':>14} {'failures':>9}")
    try:
        for workers in (4, 8):
            for governor, name in ((redis.url, "redis"), ("local", "in-process")):
                runs = []
                for _ in range(REPEATS):
                    # A fresh simulator: peak_in_flight per run.
                    with Simulator(
                        concurrency_limit=LIMIT, generation_time=GENERATION_TIME, credits=10_000
                    ) as sim:
                        result = run_fleet(sim, workers, governor)
                        result["peak"] = sim.peak_in_flight()
                    runs.append(result)
                util = [r["utilization"] for r in runs]
                n429 = [r["429s"] for r in runs]
                print(
                    f"{workers:>7} {name:<10} "
                    f"{statistics.median(util):>6.2f} [{min(util):.2f}-{max(util):.2f}]     "
                    f"{statistics.median(n429):>4.0f} [{min(n429)}-{max(n429)}] "
                    f"{sum(r['failures'] for r in runs):>9} "
                    f" peak in flight {max(r['peak'] for r in runs)}",
                    flush=True,
                )
    finally:
        redis.stop()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        asyncio.run(worker(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])))
    else:
        main()
