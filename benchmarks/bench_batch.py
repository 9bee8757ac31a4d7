"""`client.batch()` at scale: memory, throughput against the ideal, and `kill -9`.

Run as `python benchmarks/bench_batch.py [N]` (default N = 10,000). The simulator runs
in a process of its own (`nanobanana simulate`), fresh for each row, and each client
runs in a fresh process too, so that one row's memory does not leak into the next.

1. Throughput and memory. N prompts from a generator, sync mode, account limit L = 4,
   generations of T = 0.02 s. The governor's ideal is L / T items per second (L
   generations at a time, back to back). Rows:
   - `client.batch()`, no journal; and with a journal; and N/10 prompts, to show that
     the growth of memory does not follow N;
   - the hand-written alternative: `asyncio.gather` over all N prompts behind an
     `asyncio.Semaphore(L)`, raw httpx;
   - L raw httpx workers sending one request after another (httpx's own transport):
     what a minimal hand-written client gets from the same simulator;
   - async mode (submit, then poll): `client.batch()` with polls paced to T; and
     against the server's async-task cap (10, generations of 0.2 s: ideal cap / T).
   Peak RSS growth is the peak resident memory during the run (Linux VmHWM, reset
   after a warm-up) minus the resident memory before it.
2. `kill -9`. A batch of K prompts (async mode, journal and downloads) is killed at a
   random moment, then run again to the end; the simulator's ledger is then checked:
   credits charged == prompts, every paid image on disk. Repeated R times.

Figures are noisy on a shared machine: the rows run in the same invocation, and the
script prints the run of each repetition and their median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from nanobanana import AsyncNanoBanana, PollPolicy

LIMIT = 4
GENERATION_TIME = 0.02


# -- the simulator, in a process of its own ---------------------------------------------


class Sim:
    """`nanobanana simulate` on free ports; `base_url`, `admin()`."""

    def __init__(self, **options: object) -> None:
        argv = [sys.executable, "-m", "nanobanana", "simulate", "--port", "0", "--seed", "1"]
        for name, value in options.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        self.process = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        text = ""
        while "Press Ctrl-C" not in text:
            line = self.process.stderr.readline()
            if not line:
                raise RuntimeError(f"the simulator did not start: {text}")
            text += line
        self.base_url = re.search(r"base URL: (\S+)", text)[1]  # type: ignore[index]
        self.api_key = re.search(r"API key:\s+(\S+)", text)[1]  # type: ignore[index]

    def admin(self, what: str) -> list:
        origin = self.base_url.rsplit("/api/v1", 1)[0]
        return httpx.get(f"{origin}/_sim/{what}", timeout=60).json()["data"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.process.communicate()


# -- one measured run, in a fresh process (`bench_batch.py worker ...`) -----------------


def _status(field: str) -> int:
    with open("/proc/self/status") as status:  # noqa: PTH123
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear:  # noqa: PTH123 - Linux: VmHWM = VmRSS
        clear.write("5")


async def _worker(args: argparse.Namespace) -> dict:
    def prompts(count: int, tag: str):
        for n in range(count):
            yield f"{tag} prompt number {n}"

    polls = PollPolicy(first_delay=args.poll, max_interval=args.poll, jitter=0.0)
    options = {"mode": args.mode}
    if args.journal:
        options["journal"] = args.journal
    if args.download_dir:
        options["download_dir"] = args.download_dir
    statuses: dict[str, int] = {}
    async with AsyncNanoBanana(
        base_url=args.base_url, api_key=args.api_key, max_concurrency=LIMIT, poll_policy=polls
    ) as client:
        if args.engine == "batch":
            async for _ in client.batch(prompts(50, "warm-up"), mode=args.mode):
                pass
        else:
            await client.credits()
        baseline = _status("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        cpu = time.process_time()
        if args.engine == "batch":
            async with client.batch(prompts(args.n, "measured"), **options) as results:
                async for result in results:
                    statuses[result.status] = statuses.get(result.status, 0) + 1
                    if args.echo:
                        print(json.dumps({"i": result.index, "s": result.status}), flush=True)
        elif args.engine == "loop":  # the practical ideal: L workers, back to back, no more
            http = httpx.AsyncClient(
                base_url=args.base_url,
                headers={"Authorization": f"Bearer {args.api_key}"},
                timeout=60,
            )
            source = prompts(args.n, "looped")

            async def worker() -> None:
                for prompt in source:
                    response = await http.post("/generate", json={"prompt": prompt})
                    if response.json().get("success"):
                        statuses["completed"] = statuses.get("completed", 0) + 1

            async with http:
                await asyncio.gather(*(worker() for _ in range(LIMIT)))
        else:  # the hand-written alternative: gather over everything, a semaphore
            semaphore = asyncio.Semaphore(LIMIT)
            http = httpx.AsyncClient(
                base_url=args.base_url,
                headers={"Authorization": f"Bearer {args.api_key}"},
                timeout=60,
            )

            async def one(prompt: str) -> dict:
                async with semaphore:
                    response = await http.post("/generate", json={"prompt": prompt})
                    return response.json()

            async with http:
                answers = await asyncio.gather(*(one(p) for p in prompts(args.n, "gathered")))
            statuses["completed"] = sum(1 for a in answers if a.get("success"))
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        peak = _status("VmHWM")
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "growth": peak - baseline,
        "baseline": baseline,
        "statuses": statuses,
    }


def _run_worker(sim: Sim, n: int, *, engine: str = "batch", mode: str = "sync", **extra):
    argv = [sys.executable, __file__, "worker", "--base-url", sim.base_url, "--api-key",
            sim.api_key, "--n", str(n), "--engine", engine, "--mode", mode]  # fmt: skip
    for name, value in extra.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.splitlines()[-1])


# -- 1. throughput and memory -----------------------------------------------------------


def throughput(n: int, repeats: int) -> None:
    sync_ideal = LIMIT / GENERATION_TIME
    cap, slow = 10, 0.2
    print(
        f"\n1. {n:,} prompts from a generator; account limit {LIMIT}, generations of "
        f"{GENERATION_TIME} s: the governor's ideal is {sync_ideal:.0f} items/s in sync mode "
        f"(L / T). The last row: the server's async cap {cap}, generations of {slow} s, "
        f"ideal {cap / slow:.0f} items/s (cap / T)\n"
    )
    fast = {"generation_time": GENERATION_TIME, "max_async_tasks": 100_000}
    capped = {"generation_time": slow, "max_async_tasks": cap}
    # name, prompts, worker options, simulator options, ideal items/s (None: not set)
    rows = [
        ("client.batch(), sync", n, {"engine": "batch", "mode": "sync"}, fast, sync_ideal),
        (
            "client.batch(), sync, journal",
            n,
            {"engine": "batch", "mode": "sync", "journal": 1},
            fast,
            sync_ideal,
        ),
        (
            f"client.batch(), sync, {n // 10:,} prompts",
            n // 10,
            {"engine": "batch", "mode": "sync"},
            fast,
            sync_ideal,
        ),
        (
            "gather + Semaphore(4), raw httpx, sync",
            n,
            {"engine": "gather", "mode": "sync"},
            fast,
            sync_ideal,
        ),
        (
            "4 workers back to back, raw httpx, sync",
            n,
            {"engine": "loop", "mode": "sync"},
            fast,
            sync_ideal,
        ),
        (
            "client.batch(), async, journal",
            n,
            {"engine": "batch", "mode": "async", "journal": 1},
            fast,
            None,
        ),
        (
            f"client.batch(), async, cap {cap}, {n // 5:,} prompts",
            n // 5,
            {"engine": "batch", "mode": "async", "journal": 1, "poll": slow},
            capped,
            cap / slow,
        ),
    ]
    results: dict[str, list[dict]] = {row[0]: [] for row in rows}
    for _ in range(repeats):
        for name, count, options, sim_options, _ideal in rows:
            sim = Sim(concurrency_limit=LIMIT, credits=10 * n + 1000, **sim_options)
            try:
                with tempfile.TemporaryDirectory() as folder:
                    extra = {"poll": GENERATION_TIME, **options}
                    if extra.pop("journal", None):
                        extra["journal"] = str(Path(folder) / "journal.jsonl")
                    results[name].append(_run_worker(sim, count, **extra))
            finally:
                sim.stop()
    print(f"{'':44} {'items/s':>16} {'x ideal':>7} {'CPU ms/item':>12} {'peak RSS growth':>24}")
    for name, count, _options, _sim, ideal in rows:
        runs = results[name]
        rates = [count / r["elapsed"] for r in runs]
        growth = [r["growth"] / 2**10 for r in runs]
        cpu = statistics.median(r["cpu"] / count * 1000 for r in runs)
        spread = f"({min(rates):.0f}-{max(rates):.0f})" if len(runs) > 1 else ""
        gspread = f"({min(growth):.0f}-{max(growth):.0f})" if len(runs) > 1 else ""
        versus = f"{statistics.median(rates) / ideal:7.2f}" if ideal else f"{'-':>7}"
        print(
            f"{name:44} {statistics.median(rates):7.0f} {spread:>9} {versus} "
            f"{cpu:12.2f} {statistics.median(growth):8.0f} KiB {gspread:>14}"
        )
        bad = {s: c for r in runs for s, c in r["statuses"].items() if s != "completed"}
        if bad:
            print(f"{'':44} not completed: {bad}")


# -- 2. kill -9, then resume --------------------------------------------------------------


def kill_and_resume(count: int, repeats: int, rng: random.Random) -> None:
    print(f"\n2. kill -9 mid-run, then the same batch again ({count:,} prompts, async mode)\n")
    print(f"{'run':>4} {'killed at':>10} {'charged':>8} {'prompts':>8} {'on disk':>8} "
          f"{'maybe charged':>14} {'resume':>10}")  # fmt: skip
    for run in range(1, repeats + 1):
        sim = Sim(concurrency_limit=LIMIT, generation_time=0.05, credits=10 * count + 1000,
                  max_async_tasks=100_000)  # fmt: skip
        try:
            with tempfile.TemporaryDirectory() as folder:
                journal, images = Path(folder) / "journal.jsonl", Path(folder) / "images"
                argv = [sys.executable, __file__, "worker", "--base-url", sim.base_url,
                        "--api-key", sim.api_key, "--n", str(count), "--engine", "batch",
                        "--mode", "async", "--journal", str(journal), "--download-dir",
                        str(images), "--poll", "0.05", "--echo", "1"]  # fmt: skip
                process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
                target = rng.randint(count // 5, count * 4 // 5)
                done = 0
                assert process.stdout is not None
                while done < target and process.stdout.readline():
                    done += 1
                process.send_signal(signal.SIGKILL)
                process.wait()
                process.stdout.close()
                start = time.perf_counter()
                resumed = subprocess.run(argv[:-2], capture_output=True, text=True, check=False)
                took = time.perf_counter() - start
                report = json.loads(resumed.stdout.splitlines()[-1])
                statuses = report["statuses"]
                ledger = [e for e in sim.admin("ledger") if e["prompt"].startswith("measured")]
                refunded = {e["generation_id"] for e in ledger if e["kind"] == "refund"}
                charged = {e["generation_id"] for e in ledger if e["kind"] == "charge"} - refunded
                on_disk = {p.name.rsplit("-", 1)[0] for p in images.iterdir() if p.suffix == ".png"}
                paid_on_disk = len(charged & on_disk)
                print(
                    f"{run:4} {done:10,} {len(charged):8,} {count:8,} {paid_on_disk:8,} "
                    f"{statuses.get('maybe_charged', 0):14} {took:9.1f}s "
                    f"({report['elapsed']:.1f}s in the batch)"
                )
        finally:
            sim.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        parser = argparse.ArgumentParser()
        for name in ("base-url", "api-key", "engine", "mode", "journal", "download-dir"):
            parser.add_argument(f"--{name}")
        parser.add_argument("--n", type=int)
        parser.add_argument("--poll", type=float, default=GENERATION_TIME)
        parser.add_argument("--echo", type=int, default=0)
        args = parser.parse_args(sys.argv[2:])
        print(json.dumps(asyncio.run(_worker(args))), flush=True)
        return
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    repeats = int(os.environ.get("BENCH_REPEATS", "3"))
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {repeats} repetitions")
    throughput(n, repeats)
    kill_and_resume(max(500, n // 5), repeats + 2, random.Random(1))


if __name__ == "__main__":
    main()
