"""How far `sdvram estimate`'s calibrated column is from `sdvram simulate`, on random settings, and how long one
calibrated answer takes.

Usage: python benchmarks/calibrated.py [SETTINGS] [SEED]   (default 200 settings, seed 1; about 2 minutes)
Settings are drawn as the test draws them: sides uniform in 64..4096 px (multiples of 8), batch 1 to 4, fp16 or
fp32, no switch or one, any card of the GPU table, each simulated on its card's architecture without a memory
limit (what the run needs, which the calibration predicts). Prints the worst relative error
per switch set, of the allocated peaks (every stage's and the run's) and of the run's peak reserved, then the
worst over all. Target (issue "Pictures and an instant accurate answer"): within 3%. Asserts nothing.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import replace

from sdvram.calibrated import STAGE_NAMES, SWITCH_SETS, Calibrated, calibrate, relative_error
from sdvram.choices import DType
from sdvram.gpus import GPUS
from sdvram.requests import RunRequest, Settings


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rng = random.Random(int(sys.argv[2]) if len(sys.argv) > 2 else 1)
    from sdvram.simulate import SimulateOptions, simulate

    worst: dict[str, dict[str, tuple[float, str]]] = {}
    timings = []
    started = time.perf_counter()
    for _ in range(count):
        height, width = rng.randrange(64, 4097, 8), rng.randrange(64, 4097, 8)
        batch, dtype = rng.randint(1, 4), rng.choice(["float16", "float32"])
        switch_set, gpu = rng.choice(list(SWITCH_SETS)), rng.choice(list(GPUS.values()))
        settings = Settings(batch=batch, **SWITCH_SETS[switch_set])
        clock = time.perf_counter()
        answer = calibrate(height, width, batch=batch, dtype=dtype, sm=gpu.sm, switches=settings.switches,
                           attention_slicing=settings.attention_slicing)
        timings.append(time.perf_counter() - clock)
        assert isinstance(answer, Calibrated), answer
        record = simulate(RunRequest(height=height, width=width, dtype=DType(dtype), settings=settings),
                          SimulateOptions(replace(gpu, memory=None)))
        assert record.peak_reserved is not None
        simulated = {s.name: s.peak_allocated for s in record.stages}
        where = f"{width} x {height} px, batch {batch}, {dtype}, {gpu.key}"
        errors = {"allocated": max([abs(relative_error(answer.stages[n], simulated[n])) for n in STAGE_NAMES]
                                   + [abs(relative_error(answer.peak_allocated, record.peak_allocated))]),
                  "reserved": abs(relative_error(answer.peak_reserved, record.peak_reserved))}
        mine = worst.setdefault(switch_set, {})
        for quantity, error in errors.items():
            if error >= mine.get(quantity, (-1.0, ""))[0]:
                mine[quantity] = (error, where)
    print(f"{count} random settings simulated in {time.perf_counter() - started:.0f} s; one calibrated answer "
          f"takes {sorted(timings)[len(timings) // 2] * 1e6:.0f} us (median; the first, which reads the "
          f"coefficients, {timings[0] * 1e3:.1f} ms)")
    print(f"{'switch':<20}{'allocated':>11}  {'reserved':>9}  worst reserved at")
    for switch_set, errors in worst.items():
        print(f"{switch_set:<20}{errors['allocated'][0]:>11.2%}  {errors['reserved'][0]:>9.2%}  "
              f"{errors['reserved'][1]}")
    for quantity in ("allocated", "reserved"):
        error, where = max(e[quantity] for e in worst.values())
        print(f"worst {quantity}: {error:.2%} ({where})")


if __name__ == "__main__":
    main()
