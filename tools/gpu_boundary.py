"""On a CUDA GPU: is `sdvram fit`'s boundary where the real allocator's is? For an 8 GB and a 12 GB card (the RTX
4060's and RTX 3060's memory, no other process on them), cap PyTorch's allocator at what such a card leaves usable
(`torch.cuda.set_per_process_memory_fraction`: the card's memory less the CUDA context sdvram assumes, as a
fraction of this GPU's), find the largest square size that fit's search gives for the card, with no switch and
with VAE tiling (4 steps: the peaks are in the VAE and the UNet's calls, not in their count), and profile the real
pipeline (random weights, fp16) at that size and at 64 px more.

Each line gives the real outcome with its peaks (or the stage it ran out of memory in), and `simulate`'s verdict at
that size twice: for the card itself (what `fit` and `simulate --gpu` answer) and for this GPU held to the card's
memory (what actually ran: this GPU's attention kernels, cuBLAS workspace and convolution rules).

usage: PYTHONPATH=src python3 tools/gpu_boundary.py > boundary.jsonl     (one JSON line per run)
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace
from typing import Any

import torch

from sdvram.choices import Weights
from sdvram.fit import largest
from sdvram.gpus import GPUS, GpuSpec, spec_for_device, with_reserve
from sdvram.profiler import profile
from sdvram.requests import ProfileOptions, RunRequest, Settings
from sdvram.simulate import SimulateOptions, simulator_for

STEPS = 4  # the peaks are in the VAE's encode and decode and the UNet's calls, which the step count does not change
STEP_UP = 64  # px more on the side: the size that should not fit


def real(request: RunRequest) -> dict[str, Any]:
    """The real run, profiled: its outcome, peaks and stage peaks, or the stage it ran out of memory in."""
    gc.collect()
    torch.cuda.empty_cache()
    record = profile(request, ProfileOptions(device="cuda", weights=Weights.random)).record
    return {"outcome": record.status, "failed_stage": record.failed_stage,
            "peak_allocated": record.peak_allocated, "peak_reserved": record.peak_reserved,
            "stages": [[s.name, s.allocated_start, s.peak_allocated, s.peak_reserved] for s in record.stages]}


def verdict(request: RunRequest, gpu: GpuSpec) -> dict[str, Any]:
    simulated = simulator_for(request, gpu).run(request, SimulateOptions(gpu))
    fit = simulated.simulation.fit if simulated.simulation else None
    assert fit is not None
    return {"verdict": fit.verdict, "decided_on": fit.decided_on, "failed_stage": fit.failed_stage,
            "peak_allocated": simulated.peak_allocated, "peak_reserved": simulated.peak_reserved}


def main() -> None:
    properties = torch.cuda.get_device_properties(0)
    here = spec_for_device(properties.name, (properties.major, properties.minor), properties.total_memory)
    for key in ("rtx4060", "rtx3060"):
        card = with_reserve(GPUS[key], 0)
        assert card.capacity is not None
        held = replace(here, memory=card.capacity + here.context, reserve=0)  # this GPU with the card's capacity
        torch.cuda.set_per_process_memory_fraction(card.capacity / properties.total_memory)
        for label, switches in (("none", {}), ("vae_tiling", {"vae_tiling": True})):
            settings = Settings(steps=STEPS, **switches)
            base = RunRequest(settings=settings)
            found = largest(simulator_for(base, card), base, card, (1, 1), tuple(switches), lambda: None)
            if not found.width:
                print(json.dumps({"card": key, "switches": label, "side": None, "note": "no size fits"}))
                continue
            for side, expected in ((found.width, "completed"), (found.width + STEP_UP, "out_of_memory")):
                request = replace(base, width=side, height=side)
                started = time.perf_counter()
                line = {"card": key, "capacity": card.capacity, "fraction": card.capacity / properties.total_memory,
                        "switches": label, "side": side, "expected": expected, **real(request)}
                line.update({"agrees": line["outcome"] == expected, "s": round(time.perf_counter() - started, 1),
                             "simulated_as_card": verdict(request, card),
                             "simulated_as_this_gpu_held": verdict(request, held),
                             "gpu": properties.name, "torch": torch.__version__})
                print(json.dumps(line), flush=True)
    torch.cuda.set_per_process_memory_fraction(1.0)


if __name__ == "__main__":
    main()
