"""Time `sdvram simulate`: the whole process for 512, 1024 and 2048 px, and a 15-size sweep that builds the
models once. Prints figures; asserts nothing.

Usage: python benchmarks/simulate.py [RUNS]   (default 1 whole-process run per size)
Targets from the issue, on the 2-core development machine: under 10 s per whole process; the sweep under
60 s including its imports.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

SIZES = (512, 1024, 2048)
SWEEP = [(h, w) for h, w in ((256, 256), (384, 384), (512, 512), (512, 768), (768, 512), (640, 640), (768, 768),
                             (896, 896), (1024, 1024), (1024, 1536), (1536, 1024), (1280, 1280), (1536, 1536),
                             (1792, 1792), (2048, 2048))]


def whole_process(runs: int) -> None:
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's test install command first")
    for size in SIZES:
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([script, "simulate", "--h", str(size), "--w", str(size)], check=True,
                           capture_output=True)
            times.append(time.perf_counter() - start)
        print(f"sdvram simulate --h {size} --w {size}: median {statistics.median(times):.1f} s "
              f"over {runs} run(s) (whole process: imports, build on meta, simulation, table)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sdvram.simulate"], check=True)
    print(f"of which importing torch, diffusers and transformers: {time.perf_counter() - start:.1f} s")


def sweep() -> None:
    start = time.perf_counter()
    from sdvram.gpus import GPUS
    from sdvram.profiler import ProfileRequest
    from sdvram.simulate import SimulateOptions, Simulator

    imported = time.perf_counter()
    simulator = Simulator("sd15", "float16", True)
    built = time.perf_counter()
    options = SimulateOptions(GPUS["h100"])
    for height, width in SWEEP:
        t0 = time.perf_counter()
        record = simulator.run(ProfileRequest(height=height, width=width, weights="random", dtype="float16"), options)
        print(f"  {width}x{height}: peak {record.peak_allocated / 1024**3:.3f} GiB in {record.peak_stage}, "
              f"{time.perf_counter() - t0:.2f} s")
    done = time.perf_counter()
    print(f"sweep of {len(SWEEP)} sizes: {done - start:.1f} s in all (imports {imported - start:.1f} s, "
          f"build {built - imported:.1f} s, simulations {done - built:.1f} s)")


if __name__ == "__main__":
    whole_process(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    sweep()
