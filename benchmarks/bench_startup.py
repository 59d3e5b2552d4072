"""Start-up of the `transferbench` command: `--help`, a subcommand's `--help` and the listings, against
`python -c pass` (the interpreter's own start-up) measured in the same run.

    python benchmarks/bench_startup.py             # 5 runs of each command
    python benchmarks/bench_startup.py --runs 10

Each command runs as a fresh process (``python -m transferbench ...``, as the console script does it, without
depending on where the script was installed), its output discarded; the first round warms the page cache and is
not counted. Wall seconds min / median / max per command, and the median over `python -c pass`'s median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "transferbench --help": ["-m", "transferbench", "--help"],
    "transferbench run --help": ["-m", "transferbench", "run", "--help"],
    "transferbench sweep --help": ["-m", "transferbench", "sweep", "--help"],
    "transferbench tasks list": ["-m", "transferbench", "tasks", "list"],
    "transferbench checkpoints list": ["-m", "transferbench", "checkpoints", "list"],
}
TARGET_S = 1.5  # issue #14: --help and the listings under 1.5 s


def wall_seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(runs: int) -> dict[str, list[float]]:
    """Wall seconds of each command, ``runs`` times, round-robin (a slow moment of the machine hits every command
    alike), after one uncounted warm-up round."""
    for args in COMMANDS.values():
        wall_seconds(args)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(runs):
        for name, args in COMMANDS.items():
            times[name].append(wall_seconds(args))
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each command (default 5)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{platform.processor() or platform.machine()}, {cores} CPU cores, Python {platform.python_version()}, "
          f"{args.runs} runs each (wall seconds)")
    times = measure(args.runs)
    baseline = statistics.median(times["python -c pass"])
    print(f"{'command':34} {'min':>6} {'median':>7} {'max':>6} {'x python -c pass':>17}")
    slowest = 0.0
    for name, seconds in times.items():
        median = statistics.median(seconds)
        print(f"{name:34} {min(seconds):6.2f} {median:7.2f} {max(seconds):6.2f} {median / baseline:16.1f}x")
        if name != "python -c pass":
            slowest = max(slowest, max(seconds))
    verdict = "PASS" if slowest < TARGET_S else "FAIL"
    print(f"slowest transferbench run: {slowest:.2f} s ({verdict}: target < {TARGET_S} s)")
    return 0 if slowest < TARGET_S else 1


if __name__ == "__main__":
    sys.exit(main())
