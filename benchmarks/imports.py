"""What each import of a simulation costs, whole process, on this machine: the floor F of any command that runs
diffusers (`import torch, diffusers, transformers`), then each module a simulation loads, added one at a time, each
in a fresh interpreter (medians); and F without the interpreter's teardown, which sdvram's commands skip, and with
the garbage collector paused, as sdvram's commands import them. Lists
the largest modules `python -X importtime` reports for `sdvram simulate`.

Usage: python benchmarks/imports.py [RUNS]    (default 3)
Prints figures; asserts nothing.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

STEPS = [
    ("python itself", "pass"),
    ("torch", "import torch"),
    ("F: torch, diffusers, transformers", "import torch, diffusers, transformers"),
    # what the interpreter's teardown of those modules costs: sdvram skips it once torch is loaded (cli._end_now)
    ("F ended by os._exit, without the teardown", "import torch, diffusers, transformers, os; os._exit(0)"),
    # and what the garbage collector's passes over the objects the imports make cost: sdvram pauses it (collector.py)
    ("F with the garbage collector paused", "import gc; gc.disable(); import torch, diffusers, transformers"),
    # and what Dynamo, sympy and DTensor cost of it: sdvram puts stand-ins in their place (standins.py)
    ("F with sdvram's stand-ins (Dynamo, sympy, symbolic shapes, DTensor)",
     "import torch; from sdvram import standins; standins.defer(); import diffusers, transformers"),
    ("sdvram.pipeline (the model classes, diffusers' packages lazy)", "import sdvram.pipeline"),
    ("sdvram.simulate", "import sdvram.simulate"),
    ("all a simulation loads (simulate, profiler, fit, report)",
     "import sdvram.simulate, sdvram.profiler, sdvram.fit, sdvram.report"),
]


def timed(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def largest_imports(count: int = 12) -> list[tuple[float, str]]:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sdvram.simulate"], capture_output=True,
                          text=True, check=True)
    found = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            found.append((int(parts[1]) / 1e6, parts[2].rstrip()))
    return sorted(found, reverse=True)[:count]


def main(runs: int) -> None:
    floor = None
    for label, code in STEPS:
        seconds = timed(code, runs)
        if label.startswith("F:"):
            floor = seconds
        print(f"{seconds:5.2f} s  {label}" + (f"  ({seconds / floor:.2f} F)" if floor else ""))
    print("largest cumulative imports of `import sdvram.simulate` (python -X importtime):")
    for seconds, name in largest_imports():
        print(f"{seconds:5.2f} s  {name}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
