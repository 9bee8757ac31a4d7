"""What `import nanobanana` costs on top of `import httpx`.

Run as `python benchmarks/bench_import.py [RUNS]`. Each import is timed in a fresh
interpreter (so nothing is cached in `sys.modules`), around the import statement
only, so that interpreter start-up does not blur the difference; the median of RUNS
(default 15) is kept for each. The two kinds of run alternate, so that a burst of
other load on the machine hurts both alike.
"""

from __future__ import annotations

import statistics
import subprocess
import sys

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
PROBE = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"


def _once(module):
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout) * 1000


def main():
    samples = {"httpx": [], "nanobanana": []}
    _once("httpx")  # warm the OS file cache
    _once("nanobanana")
    for _ in range(RUNS):
        for module, times in samples.items():
            times.append(_once(module))
    medians = {module: statistics.median(times) for module, times in samples.items()}
    print(f"median of {RUNS} fresh interpreters, time of the import statement:")
    for module, median in medians.items():
        print(f"  import {module:<11} {median:7.1f} ms")
    print(f"  nanobanana - httpx  {medians['nanobanana'] - medians['httpx']:7.1f} ms")


if __name__ == "__main__":
    main()
