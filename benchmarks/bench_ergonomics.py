"""What the production ergonomics cost per call: the stats hooks, the spend cap, stats().

Run as `python benchmarks/bench_ergonomics.py [N] [ROUNDS]`. Starts `_server.py` (one
canned `POST /generate` answer, in its own process) and fans out N
`AsyncNanoBanana.generate()` calls per round with `asyncio.gather`, for three
clients measured in the same run, round-robin so that the machine's load falls on
all of them alike:

- "hooks off": the recorder's hooks and the per-call charge replaced by no-ops, the
  client as it was before stats, structured logs and the cap (the reference);
- "as shipped": the default client (counters, call traces, log checks);
- "max_credits": with a spend cap, so every call is also estimated, reserved and
  settled (the catalogue is stored up front: the bench server only speaks generate).

It prints requests per second and client CPU microseconds per request, as medians with
their range over the rounds, and the ratio of each median to the reference; then the
cost of one `client.stats()` call, and the added work per call measured alone, without
I/O (steadier than the end-to-end figures on a busy machine): the four recorder hooks
of one attempt, and a capped call's estimate, reservation and settling.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import httpx

from nanobanana import AsyncNanoBanana, Model
from nanobanana._budget import Catalogue, Charge, Ledger
from nanobanana._retry import RequestKind
from nanobanana._stats import Recorder

HERE = Path(__file__).resolve().parent
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 7


class _NoRecorder(Recorder):
    """Hooks that do nothing: the request path without #14's recording."""

    def sending(self, *args, **kwargs):
        pass

    def answered(self, *args, **kwargs):
        pass

    def failed(self, *args, **kwargs):
        pass

    def retrying(self, *args, **kwargs):
        pass


class _NoCharge(Charge):
    def __init__(self):
        super().__init__(Ledger.root(None), None)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def _client(base, variant):
    options = {"max_credits": 10**12} if variant == "max_credits" else {}
    client = AsyncNanoBanana(api_key="nb_bench", base_url=base, max_concurrency=100, **options)
    if variant == "max_credits":
        client._catalogue.store([Model(name="nano-banana", display_name="x", credits_cost=1)])
    if variant == "hooks off":
        client._requester.recorder = _NoRecorder()
        no_charge = _NoCharge()

        async def charge(_body):
            return no_charge

        client._charge = charge
    return client


async def _round(client):
    start = time.perf_counter()
    cpu = time.process_time()
    results = await asyncio.gather(*(client.generate("x") for _ in range(N)))
    cpu = time.process_time() - cpu
    elapsed = time.perf_counter() - start
    assert len(results) == N
    return N / elapsed, cpu / N * 1e6


async def run(base):
    variants = ["hooks off", "as shipped", "max_credits"]
    rates = {v: [] for v in variants}
    cpus = {v: [] for v in variants}
    async with contextlib.AsyncExitStack() as stack:
        clients = {v: await stack.enter_async_context(_client(base, v)) for v in variants}
        for client in clients.values():
            await _round(client)  # warm-up: connections, caches
        for _ in range(ROUNDS):
            for variant in variants:
                rate, cpu = await _round(clients[variant])
                rates[variant].append(rate)
                cpus[variant].append(cpu)
        shipped = clients["max_credits"]
        per_call = min(timeit.repeat(shipped.stats, number=10_000, repeat=5)) / 10_000
        spent = shipped.stats().credits_spent
    return variants, rates, cpus, per_call, spent


def _alone(function, number=100_000):
    """Microseconds per call of ``function``, best of five runs."""
    return min(timeit.repeat(function, number=number, repeat=5)) / number * 1e6


def micro():
    recorder = Recorder()
    request = httpx.Request("POST", "http://127.0.0.1/api/v1/generate")
    response = httpx.Response(200, request=request, content=b"{}")

    def hooks():
        recorder.sending("POST", "/generate", queued=0.0)
        recorder.answered("POST", "/generate", RequestKind.GENERATE, 1, response, elapsed=0.01)

    ledger = Ledger.root(10**15)
    catalogue = Catalogue()
    catalogue.store([Model(name="nano-banana", display_name="x", credits_cost=1)])
    body = {"prompt": "x", "mode": "sync"}

    async def fetch():
        raise AssertionError("the catalogue is stored")

    async def capped_calls(number):
        for _ in range(number):
            charge = ledger.charge(await catalogue.cost_of(body, fetch))
            with charge:
                charge.trace.sent = charge.trace.accepted = True
                charge.answered({"creditsUsed": 1})

    def cap(number=100_000):
        start = time.perf_counter()
        asyncio.run(capped_calls(number))
        return (time.perf_counter() - start) / number * 1e6

    return _alone(hooks), min(cap() for _ in range(5))


def main():
    server = subprocess.Popen(
        [sys.executable, str(HERE / "_server.py")], stdout=subprocess.PIPE, text=True
    )
    try:
        port = int(server.stdout.readline())
        base = f"http://127.0.0.1:{port}/api/v1"
        print(f"{N} gathered generate() calls per round, {ROUNDS} rounds per client, round-robin")
        variants, rates, cpus, per_call, spent = asyncio.run(run(base))
        ref_rate = statistics.median(rates["hooks off"])
        ref_cpu = statistics.median(cpus["hooks off"])
        print(
            f"{'client':<14} {'req/s median':>12} {'(range)':>15} {'x ref':>6}"
            f" {'CPU us/req median':>18} {'(range)':>11} {'x ref':>6}"
        )
        for variant in variants:
            rate = statistics.median(rates[variant])
            cpu = statistics.median(cpus[variant])
            rate_range = f"{min(rates[variant]):.0f}-{max(rates[variant]):.0f}"
            cpu_range = f"{min(cpus[variant]):.0f}-{max(cpus[variant]):.0f}"
            print(
                f"{variant:<14} {rate:>12.0f} {rate_range:>15} {rate / ref_rate:>6.2f}"
                f" {cpu:>18.0f} {cpu_range:>11} {cpu / ref_cpu:>6.2f}"
            )
        print(f"client.stats(): {per_call * 1e6:.2f} us per call")
        hooks, cap = micro()
        print(f"alone, no I/O: recorder hooks {hooks:.2f} us per attempt; estimate, reserve")
        print(f"and settle of a capped call {cap:.2f} us (asyncio.run overhead included)")
        print(f"(the capped client counted {spent} credits spent, one per call)")
    finally:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
