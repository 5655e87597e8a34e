"""On a CUDA GPU: per-component activation peaks (VAE decode, VAE encode, UNet at batch 2) with flash attention on
and off, and the largest transient any Conv2d held (its cuDNN workspace).

usage: PYTHONPATH=src python3 tools/gpu_components.py [HxW ...]
Prints one JSON line per case: component, size, flash, peak allocated - allocated before, requested-bytes peak -
before, reserved peak, seconds, and (flash on) the three largest conv workspaces.
"""

import json
import sys
import time

import torch
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

from sdvram.architecture import component_config

DEV = torch.device("cuda")


def measure(run) -> dict:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_stats()
    start = time.perf_counter()
    with torch.no_grad():
        out = run()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = torch.cuda.memory_stats()
    del out
    return {"act_alloc": after["allocated_bytes.all.peak"] - before["allocated_bytes.all.current"],
            "act_requested": after.get("requested_bytes.all.peak", 0) - before.get("requested_bytes.all.current", 0),
            "reserved_peak": after["reserved_bytes.all.peak"], "s": round(seconds, 3)}


def conv_workspaces(module, run) -> dict:
    """Run with hooks on every Conv2d: the most memory a conv held beyond its input and output."""
    found = []

    def pre(mod, args):
        torch.cuda.reset_peak_memory_stats()
        mod._before = torch.cuda.memory_allocated()

    def post(mod, args, out):
        found.append((torch.cuda.max_memory_allocated() - mod._before - out.untyped_storage().nbytes(), mod._name,
                      tuple(out.shape)))

    hooks = []
    for name, mod in module.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            mod._name = name
            hooks += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    found.sort(reverse=True)
    return {"conv_ws_max": found[0][0] if found else None, "conv_ws_top": found[:3],
            "convs_with_ws": sum(1 for f in found if f[0] > 4096), "convs": len(found)}


def main() -> None:
    torch.set_default_dtype(torch.float16)
    with torch.device(DEV):
        vae = AutoencoderKL.from_config(component_config("vae", "sd15")).eval().requires_grad_(False)
        unet = UNet2DConditionModel.from_config(component_config("unet", "sd15")).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    sizes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]] or [(512, 512), (1200, 1800), (2048, 2048)]
    for h, w in sizes:
        lat = torch.randn(1, 4, h // 8, w // 8, device=DEV, dtype=torch.float16)
        img = torch.randn(1, 3, h // 8 * 8, w // 8 * 8, device=DEV, dtype=torch.float16)
        lat2 = torch.randn(2, 4, h // 8, w // 8, device=DEV, dtype=torch.float16)
        emb = torch.randn(2, 77, 768, device=DEV, dtype=torch.float16)
        t = torch.tensor(500, device=DEV)
        cases = {
            "vae_decode": (vae, lambda lat=lat: vae.decode(lat).sample),
            "vae_encode": (vae, lambda img=img: vae.encode(img).latent_dist.sample()),
            "unet": (unet, lambda lat2=lat2, t=t, emb=emb: unet(lat2, t, encoder_hidden_states=emb).sample),
        }
        for name, (module, run) in cases.items():
            for flash in (True, False):
                torch.backends.cuda.enable_flash_sdp(flash)
                try:
                    with torch.no_grad():
                        run()  # warm: cuDNN heuristics, kernel loading
                    result = measure(run)
                    if flash:
                        result.update(conv_workspaces(module, run))
                except torch.cuda.OutOfMemoryError as exc:
                    result = {"oom": str(exc)[:120]}
                result.update(component=name, h=h, w=w, flash=flash)
                print(json.dumps(result), flush=True)
        torch.backends.cuda.enable_flash_sdp(True)
    print(json.dumps({"weights_allocated": torch.cuda.memory_allocated()}))


if __name__ == "__main__":
    main()
