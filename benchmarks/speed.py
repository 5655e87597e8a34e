"""The speed targets of the issue "Answers in seconds", measured as it defines them: whole processes, medians, in
units of F, the time `python -c "import torch, diffusers, transformers"` takes on this machine (the floor of any
command that runs diffusers). Each command and F are timed RUNS times, interleaved, so that a busy spell of the
machine weighs on all of them alike.

Usage: python benchmarks/speed.py [RUNS]   (default 3; about a minute a run on the 2-core development machine)
Prints figures and whether each target is met; asserts nothing.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

FLOOR = [sys.executable, "-c", "import torch, diffusers, transformers"]
# (arguments of sdvram, the target in units of F)
COMMANDS = [
    (["simulate", "--h", "512", "--w", "512"], 1.25),
    (["simulate", "--h", "2048", "--w", "2048"], 1.4),
    (["sweep", "--gpu", "rtx3060", "--sizes", "256:2048:128"], 2.0),  # 15 sizes on one card
    (["fit", "--gpu", "rtx3060"], 2.5),
    (["fit", "--gpu", "h200"], 3.0),
]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - start


def main(runs: int) -> None:
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's test install command first")
    floors: list[float] = []
    times: dict[int, list[float]] = {i: [] for i in range(len(COMMANDS))}
    for _ in range(runs):
        floors.append(timed(FLOOR))
        for i, (args, _target) in enumerate(COMMANDS):
            times[i].append(timed([script, *args]))
    floor = statistics.median(floors)
    print(f"F = {floor:.2f} s (median of {runs}: python -c \"import torch, diffusers, transformers\")")
    for i, (args, target) in enumerate(COMMANDS):
        seconds = statistics.median(times[i])
        verdict = "met" if seconds <= target * floor else "not met"
        print(f"sdvram {' '.join(args)}: {seconds:.1f} s = {seconds / floor:.2f} F "
              f"(target {target:g} F = {target * floor:.1f} s: {verdict})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
