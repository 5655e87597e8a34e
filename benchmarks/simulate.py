"""Time `sdvram simulate` and measure its host memory: the whole process for 512, 1024 and 2048 px; the peak RSS at
2048 x 2048 and at 16384 x 16384 batch 64 (the image is a shape, never pixels on the host); what the allocator model
costs, and what the replay split by pool saves; and a 15-size sweep that builds the models once.

Usage: python benchmarks/simulate.py [RUNS]   (default 1 whole-process run per size)
Targets (issues), on the 2-core development machine: under 10 s per whole process at 2048 x 2048, of which the
allocator model at most 1 s; under 2 GB of host memory at 16384 x 16384 batch 64; a 15-size sweep under 60 s
(in this process, and `sdvram sweep` as a whole process).
Prints figures; asserts nothing.
"""

from __future__ import annotations

import resource
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
            subprocess.run([script, "simulate", "--h", str(size), "--w", str(size)], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        print(f"sdvram simulate --h {size} --w {size}: median {statistics.median(times):.1f} s over {runs} run(s) "
              "(whole process: imports, build on meta, simulation, table)")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sdvram.simulate"], check=True)
    print(f"of which importing torch, diffusers and transformers: {time.perf_counter() - start:.1f} s")
    for args in (["--h", "2048", "--w", "2048"], ["--h", "16384", "--w", "16384", "--batch", "64"]):
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", script, "simulate", *args], capture_output=True,
                              text=True, check=False)
        peak_kib = int(proc.stderr.strip().splitlines()[-1])
        answer = proc.stdout.splitlines()[0] if proc.stdout else proc.stderr.strip()
        print(f"sdvram simulate {' '.join(args)}: peak host memory {peak_kib / 1024:.0f} MiB (max RSS); {answer}")


def allocator_cost() -> None:
    """The same simulation with the allocator model and with a plain live-bytes accountant."""
    from sdvram import simulate as sim_module
    from sdvram.accounting import LiveBytes
    from sdvram.gpus import GPUS
    from sdvram.requests import RunRequest
    from sdvram.simulate import SimulateOptions, Simulator

    simulator = Simulator()
    request = RunRequest(height=2048, width=2048)
    options = SimulateOptions(GPUS["h100"])
    simulator.run(request, options)  # warm the op cache, as a sweep's later points are
    start = time.perf_counter()
    simulator.run(request, options)
    with_model = time.perf_counter() - start
    real = sim_module.AllocatorAccountant
    sim_module.AllocatorAccountant = lambda allocator, split=True: LiveBytes(512)  # type: ignore[assignment,misc]
    try:
        start = time.perf_counter()
        simulator.run(request, options)
        without = time.perf_counter() - start
    finally:
        sim_module.AllocatorAccountant = real
    print(f"2048 x 2048 simulation: {with_model:.2f} s with the allocator model, {without:.2f} s summing live bytes: "
          f"the model adds {with_model - without:.2f} s")


def pool_split() -> None:
    """A run whose calls are all replayed (a fit search's runs mostly are), with the allocator's replay split by
    pool and with every call's events run as they came (``AllocatorAccountant._replay_split``)."""
    from sdvram.gpus import GPUS
    from sdvram.requests import RunRequest
    from sdvram.simulate import SimulateOptions, Simulator

    simulator = Simulator()
    request = RunRequest(height=1904, width=1904)
    options = SimulateOptions(GPUS["rtx3060"], stop_at_failure=True)
    simulator.run(request, options)  # every call logged
    times = {}
    for split in (True, False):
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            simulator._run(request, options, None, split=split)
            runs.append(time.perf_counter() - start)
        times[split] = statistics.median(runs)
    print(f"a replayed 1904 x 1904 run on an RTX 3060: {times[True]:.3f} s split by pool, {times[False]:.3f} s with "
          "every call's events run as they came (medians of 5)")


def sweep() -> None:
    start = time.perf_counter()
    from sdvram.gpus import GPUS
    from sdvram.requests import RunRequest
    from sdvram.simulate import SimulateOptions, Simulator

    imported = time.perf_counter()
    simulator = Simulator()
    built = time.perf_counter()
    options = SimulateOptions(GPUS["h100"])
    for height, width in SWEEP:
        t0 = time.perf_counter()
        record = simulator.run(RunRequest(height=height, width=width), options)
        print(f"  {width} x {height}: peak {record.peak_allocated / 1024**3:.3f} GiB in {record.peak_stage}, "
              f"{time.perf_counter() - t0:.2f} s")
    done = time.perf_counter()
    print(f"sweep of {len(SWEEP)} sizes: {done - start:.1f} s in all (imports {imported - start:.1f} s, "
          f"build {built - imported:.1f} s, simulations {done - built:.1f} s); this process's peak host memory "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def sweep_command() -> None:
    """`sdvram sweep` as a user runs it: 15 sizes (256 to 2048 by 128) on one card, the whole process."""
    script = shutil.which("sdvram")
    assert script is not None
    start = time.perf_counter()
    subprocess.run([script, "sweep", "--gpu", "rtx3060"], check=True, capture_output=True)
    print(f"sdvram sweep --gpu rtx3060 (15 sizes, 256 to 2048 px): {time.perf_counter() - start:.1f} s, whole process")


if __name__ == "__main__":
    whole_process(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    allocator_cost()
    pool_split()
    sweep()
    sweep_command()
