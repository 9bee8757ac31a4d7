"""Paid == delivered: images saved whole, of those paid for, under CDN faults.

Run as `python benchmarks/bench_delivery.py [RUNS]` (default 5). Each run starts a fresh
simulator (seeded: run i uses seed i) whose CDN answers 30 % of image requests with
one of the faults a real CDN has: a 500, a reset connection, a body cut short of its
Content-Length, or an HTML page answered 200 (the issue's mix). Then 40 sync
generations of 2 images are made, and each generation's images are downloaded with:

- `client.download(generation, dest)`, with the client's default retry policy;
- a raw httpx downloader as a careful user writes one: `GET`, `raise_for_status()`,
  up to 3 retries with exponential backoff on 5xx and transport errors, then the
  bytes written to `<id>-<n>.png`.

Paid is counted from the simulator's ledger (the quantity of every generation charged,
net of refunds); delivered is the number of files that hold exactly the bytes the
simulator serves for that image. The numbers are counts, so the shared machine's noise
does not move them; the seconds are wall-clock, for scale only.
"""

from __future__ import annotations

import asyncio
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from nanobanana.testing import Simulator, render_image

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
GENERATIONS, QUANTITY = 40, 2
RATE = 0.3
FAULTS = ("cdn_500", "cdn_reset", "cdn_cut", "cdn_html")


def paid(sim: Simulator) -> int:
    net: collections.Counter[str] = collections.Counter()
    for entry in sim.ledger:
        net[entry.generation_id] += 1 if entry.kind == "charge" else -1
    return sum(sim.generation(gid).quantity for gid, n in net.items() if n > 0)


def delivered(sim: Simulator, folder: Path) -> int:
    count = 0
    for record in sim.generations:
        for index in range(record.quantity):
            path = folder / f"{record.id}-{index}.png"
            expected = render_image(record.prompt, index, size=sim.config.image_size)
            count += path.is_file() and path.read_bytes() == expected
    return count


async def nanobanana_download(client, generation, folder: Path, _http) -> None:
    await client.download(generation, folder)


async def raw_download(_client, generation, folder: Path, http: httpx.AsyncClient) -> None:
    for index, url in enumerate(generation.image_urls):
        for attempt in range(4):
            try:
                response = await http.get(url)
                response.raise_for_status()
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code < 500 or attempt == 3:
                    raise
            except httpx.TransportError:
                if attempt == 3:
                    raise
            else:
                (folder / f"{generation.id}-{index}.png").write_bytes(response.content)
                break
            await asyncio.sleep(0.5 * 2**attempt)


async def one_run(seed: int, downloader) -> tuple[int, int, int, float]:
    """(paid, delivered, download errors, seconds) for one seeded run."""
    with (
        tempfile.TemporaryDirectory() as tmp,
        Simulator(seed=seed, credits=1_000, concurrency_limit=4) as sim,
    ):
        folder = Path(tmp)
        sim.random_faults(rate=RATE, seed=seed, kinds=FAULTS)
        errors = 0
        async with sim.client() as client, httpx.AsyncClient() as http:
            generations = await asyncio.gather(
                *(client.generate(f"delivery {i}", quantity=QUANTITY) for i in range(GENERATIONS))
            )
            started = time.perf_counter()

            async def fetch(generation) -> None:
                nonlocal errors
                try:
                    await downloader(client, generation, folder, http)
                except Exception:  # a lost image: counted below
                    errors += 1

            await asyncio.gather(*(fetch(g) for g in generations))
            seconds = time.perf_counter() - started
        return paid(sim), delivered(sim, folder), errors, seconds


async def main() -> None:
    print(
        f"{GENERATIONS} sync generations x {QUANTITY} images, CDN faults at {RATE:.0%} "
        f"({', '.join(FAULTS)}), {RUNS} runs"
    )
    rows = {}
    for name, downloader in (
        ("client.download()", nanobanana_download),
        ("raw httpx + 3 retries", raw_download),
    ):
        results = [await one_run(seed, downloader) for seed in range(1, RUNS + 1)]
        rows[name] = results
        for seed, (p, d, e, s) in enumerate(results, start=1):
            print(f"  {name:<22} seed {seed}: paid {p}, delivered {d}, failed calls {e}, {s:.2f} s")
    print()
    print(f"{'downloader':<24}{'delivered/paid (median)':>26}{'range':>16}{'seconds (median)':>18}")
    for name, results in rows.items():
        ratios = [d / p for p, d, _e, _s in results]
        lost = [p - d for p, d, _e, _s in results]
        seconds = statistics.median(s for *_x, s in results)
        print(
            f"{name:<24}{statistics.median(ratios):>26.3f}"
            f"{f'{min(ratios):.3f}-{max(ratios):.3f}':>16}{seconds:>18.2f}"
            f"   (images lost per run: {sorted(lost)})"
        )


if __name__ == "__main__":
    asyncio.run(main())
