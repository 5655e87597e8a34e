"""The speed targets of the issue "Answers in seconds", measured as it defines them: whole processes, medians, in
units of F, the time `python -c "import torch, diffusers, transformers"` takes on this machine (the floor of any
command that runs diffusers). Each command and F are timed RUNS times, interleaved, so that a busy spell of the
machine weighs on all of them alike.

Usage: python benchmarks/speed.py [RUNS] [--base SRC]   (default 3 runs; about a minute a run here)
  --base SRC: also time another checkout's package (its src folder, put first on PYTHONPATH), each of its runs
              right after the same run of this one, for a before-and-after on a machine whose speed wanders.
Prints figures and whether each target is met; asserts nothing.
"""

from __future__ import annotations

import os
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


def timed(command: list[str], src: str | None = None) -> float:
    env = dict(os.environ, PYTHONPATH=src) if src else None
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main(runs: int, base: str | None) -> None:
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's test install command first")
    floors: list[float] = []
    trees = {"this checkout": None, **({f"--base {base}": base} if base else {})}
    times: dict[tuple[str, int], list[float]] = {(tree, i): [] for tree in trees for i in range(len(COMMANDS))}
    for _ in range(runs):
        floors.append(timed(FLOOR))
        for i, (args, _target) in enumerate(COMMANDS):
            for tree, src in trees.items():
                times[tree, i].append(timed([script, *args], src))
    floor = statistics.median(floors)
    print(f"F = {floor:.2f} s (median of {runs}: python -c \"import torch, diffusers, transformers\")")
    for tree in trees:
        print(f"{tree}:")
        for i, (args, target) in enumerate(COMMANDS):
            seconds = statistics.median(times[tree, i])
            verdict = "met" if seconds <= target * floor else "not met"
            print(f"  sdvram {' '.join(args)}: {seconds:.1f} s = {seconds / floor:.2f} F "
                  f"(target {target:g} F = {target * floor:.1f} s: {verdict})")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    base_src = None
    if "--base" in arguments:
        at = arguments.index("--base")
        base_src = arguments[at + 1]
        del arguments[at:at + 2]
    main(int(arguments[0]) if arguments else 3, base_src)
