"""On a CUDA GPU: is `sdvram fit`'s boundary where the real allocator's is? For an 8 GB and a 12 GB card (the RTX
4060's and RTX 3060's memory, no other process on them), cap PyTorch's allocator at what such a card leaves usable
(`torch.cuda.set_per_process_memory_fraction`: the card's memory less the CUDA context sdvram assumes, as a
fraction of this GPU's), find the largest square size the simulation fits with no switch and with VAE tiling, run
the real pipeline (random weights, fp16, 4 steps: the peaks are in the VAE) at that size, which must complete, and
at 64 px more, which must raise OutOfMemoryError.

usage: PYTHONPATH=src python3 tools/gpu_boundary.py > boundary.jsonl     (one JSON line per run)
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import replace

import torch
from PIL import Image

from sdvram.fit import largest
from sdvram.gpus import GPUS, with_reserve
from sdvram.pipeline import apply_switches, build_pipeline, run_pipeline
from sdvram.pipelines import FAMILIES
from sdvram.requests import RunRequest, Settings
from sdvram.simulate import simulator_for

STEPS = 4  # the peaks are in the VAE's encode and decode, which the step count does not change
STEP_UP = 64  # px more on the side: the size that must not fit


def run(side: int, settings: Settings) -> str:
    """'completed', or 'out_of_memory', for a real run at side x side."""
    gc.collect()
    torch.cuda.empty_cache()
    family = FAMILIES["sd15-img2img"]
    pipe = build_pipeline(family, device="cuda", dtype="float16", weights="random", safety_checker=False)
    try:
        apply_switches(pipe, settings, "cuda")
        run_pipeline(pipe, family, Image.new("RGB", (side, side), (120, 90, 60)), "a photo", settings,
                     height=side, width=side)
        return "completed"
    except torch.OutOfMemoryError:
        return "out_of_memory"
    finally:
        del pipe
        gc.collect()
        torch.cuda.empty_cache()


def main() -> None:
    total = torch.cuda.get_device_properties(0).total_memory
    for key in ("rtx4060", "rtx3060"):
        card = with_reserve(GPUS[key], 0)
        assert card.capacity is not None
        torch.cuda.set_per_process_memory_fraction(card.capacity / total)
        for label, switches in (("none", {}), ("vae_tiling", {"vae_tiling": True})):
            settings = Settings(steps=STEPS, **switches)
            request = RunRequest(settings=settings)
            simulator = simulator_for(request, card)
            found = largest(simulator, request, card, (1, 1), tuple(s for s in switches), lambda: None)
            for side, expected in ((found.width, "completed"), ((found.width or 0) + STEP_UP, "out_of_memory")):
                started = time.perf_counter()
                outcome = run(side, replace(settings)) if side else "no size fits"
                print(json.dumps({"card": key, "capacity": card.capacity, "fraction": card.capacity / total,
                                  "switches": label, "side": side, "expected": expected, "outcome": outcome,
                                  "agrees": outcome == expected, "s": round(time.perf_counter() - started, 1),
                                  "gpu": torch.cuda.get_device_name(), "torch": torch.__version__}), flush=True)
    torch.cuda.set_per_process_memory_fraction(1.0)


if __name__ == "__main__":
    main()
