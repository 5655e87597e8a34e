"""On a CUDA GPU: whole-pipeline peaks under diffusers' memory-saving switches (random SD v1.5 weights, fp16 unless
noted, safety checker on as from_pretrained loads it).

usage: PYTHONPATH=src python3 tools/gpu_variants.py
One JSON line per variant: {"variant", "h", "w", "batch", "dtype", "steps", "before_build", "loaded",
"peak_allocated", "peak_reserved", "s"}. All run in one process, one after the other: before_build is what was still
allocated when a variant began (the cuBLAS workspaces after the first), and it is inside that variant's peaks.
Fewer steps than the reference run: the peak stages (VAE) and PNDM's buffer fill do not depend on the count.
"""

import gc
import json
import time

import torch
from PIL import Image

from sdvram.choices import Offload
from sdvram.pipeline import apply_switches, build_pipeline, run_pipeline
from sdvram.pipelines import FAMILIES
from sdvram.requests import Settings

PROMPT = "a photo of a truck parked on a street"
# Each variant as the settings sdvram gives its switches (tests/test_measurements.py maps them back)
SWITCHES = {
    "baseline": {}, "vae_tiling": {"vae_tiling": True}, "vae_slicing": {"vae_slicing": True},
    "attention_slicing": {"attention_slicing": "auto"}, "model_cpu_offload": {"offload": Offload.model},
    "tiling_and_offload": {"vae_tiling": True, "offload": Offload.model},
}


def run(variant: str, h: int, w: int, batch: int = 1, dtype: str = "float16", steps: int = 10) -> None:
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before_build = torch.cuda.memory_allocated()
    family = FAMILIES["sd15-img2img"]
    pipe = build_pipeline(family, device="cuda", dtype=dtype, weights="random")
    image = Image.new("RGB", (w, h), (120, 90, 60))
    start = time.perf_counter()
    try:
        settings = Settings(steps=steps, batch=batch, safety_checker=True, **SWITCHES[variant])
        apply_switches(pipe, settings, "cuda")
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_pipeline(pipe, family, image, PROMPT, settings, height=h, width=w)
        torch.cuda.synchronize()
        result = {"peak_allocated": torch.cuda.max_memory_allocated(),
                  "peak_reserved": torch.cuda.max_memory_reserved()}
    except Exception as exc:  # noqa: BLE001 -- a variant that fails is a result too
        loaded = torch.cuda.memory_allocated()
        result = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    result.update(before_build=before_build, variant=variant, h=h, w=w, batch=batch, dtype=dtype, steps=steps,
                  loaded=loaded, s=round(time.perf_counter() - start, 2))
    print(json.dumps(result), flush=True)
    del pipe


def main() -> None:
    for h, w in [(1024, 1024), (2048, 2048)]:
        for variant in ["baseline", "vae_tiling", "model_cpu_offload", "tiling_and_offload"]:
            run(variant, h, w)
    run("attention_slicing", 1024, 1024)
    run("baseline", 1024, 1024, batch=2)
    run("vae_slicing", 1024, 1024, batch=2)
    run("baseline", 1024, 1024, dtype="float32")
    run("baseline", 768, 768)
    run("vae_tiling", 1536, 1536)
    run("baseline", 1536, 1536)


if __name__ == "__main__":
    main()
