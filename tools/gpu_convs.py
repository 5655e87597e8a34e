"""On a CUDA GPU: per-Conv2d workspace table across sizes (VAE decoder, VAE encoder, UNet at batch 2), the cuBLAS
workspace, and whether a channels_last VAE removes the workspace.

usage: PYTHONPATH=src python3 tools/gpu_convs.py [HxW ...]     (env: DTYPE=float16|bfloat16|float32, BATCH=1,
                                                                 SKIP_CL=1 to skip the channels_last part)
Prints JSON lines: one per conv call {"kind": "conv", component, h, w, name, in, out, k, s, p, extra, dtype, batch},
where extra = the peak allocated during the conv beyond what was allocated before it and its output's storage.
docs/measurements/<gpu>/convs*.jsonl are its output; src/sdvram/workspaces.py is the rule derived from them.
"""

import json
import os
import sys

import torch

from sdvram.architecture import component_config

SIZES = [(256, 256), (376, 392), (512, 512), (768, 768), (1536, 1536), (2048, 2048)]
DEV = torch.device("cuda")
DT = getattr(torch, os.environ.get("DTYPE", "float16"))
BATCH = int(os.environ.get("BATCH", "1"))


def cublas_line() -> str:
    x = torch.randn(77, 768, device=DEV, dtype=torch.float16)
    w = torch.randn(768, 768, device=DEV, dtype=torch.float16)
    torch.cuda.synchronize()
    a0 = torch.cuda.memory_allocated()
    y = x @ w
    torch.cuda.synchronize()
    a1 = torch.cuda.memory_allocated()
    z = torch.nn.functional.linear(x.float(), w.float())
    a2 = torch.cuda.memory_allocated()
    stats = {k: v for k, v in torch.cuda.memory_stats().items() if k.endswith(".current") and "all" in k}
    return json.dumps({"kind": "cublas", "after_first_fp16_mm": a1 - a0 - y.untyped_storage().nbytes(),
                       "after_fp32_linear": a2 - a1 - z.untyped_storage().nbytes(), "stats": stats})


def main() -> None:
    print(cublas_line(), flush=True)
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    torch.set_default_dtype(DT)
    with torch.device(DEV):
        vae = AutoencoderKL.from_config(component_config("vae", "sd15")).eval().requires_grad_(False)
        unet = UNet2DConditionModel.from_config(component_config("unet", "sd15")).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    rows: list[dict] = []

    def pre(mod, args):
        torch.cuda.reset_peak_memory_stats()
        mod._before = torch.cuda.memory_allocated()
        mod._in = tuple(args[0].shape)

    def post(mod, args, out):
        extra = torch.cuda.max_memory_allocated() - mod._before - out.untyped_storage().nbytes()
        rows.append({"name": mod._name, "in": mod._in, "out": tuple(out.shape), "k": mod.kernel_size[0],
                     "s": mod.stride[0], "p": mod.padding[0] if isinstance(mod.padding, tuple) else mod.padding,
                     "extra": extra})

    for module in (vae, unet):
        for name, mod in module.named_modules():
            if isinstance(mod, torch.nn.Conv2d):
                mod._name = name
                mod.register_forward_pre_hook(pre)
                mod.register_forward_hook(post)
    sizes = [tuple(int(v) for v in s.split("x")) for s in sys.argv[1:]] or SIZES
    for h, w in sizes:
        lat = torch.randn(BATCH, 4, h // 8, w // 8, device=DEV, dtype=DT)
        img = torch.randn(BATCH, 3, h, w, device=DEV, dtype=DT)
        lat2 = torch.randn(2 * BATCH, 4, h // 8, w // 8, device=DEV, dtype=DT)
        emb = torch.randn(2 * BATCH, 77, 768, device=DEV, dtype=DT)
        t = torch.tensor(500, device=DEV)
        cases = {
            "vae_decode": lambda lat=lat: vae.decode(lat).sample,
            "vae_encode": lambda img=img: vae.encode(img).latent_dist.sample(),
            "unet": lambda lat2=lat2, t=t, emb=emb: unet(lat2, t, encoder_hidden_states=emb).sample,
        }
        for component, run in cases.items():
            with torch.no_grad():
                run()  # warm: cuDNN heuristics, kernel loading
                rows.clear()
                run()
            for row in rows:
                row.update(kind="conv", component=component, h=h, w=w, dtype=str(DT).split(".")[-1], batch=BATCH)
                print(json.dumps(row))
            sys.stdout.flush()
    if os.environ.get("SKIP_CL"):
        return
    vae.to(memory_format=torch.channels_last)  # does the layout change remove the workspace?
    for h, w in [(1024, 1024), (2048, 2048)]:
        lat = torch.randn(1, 4, h // 8, w // 8, device=DEV, dtype=torch.float16)
        with torch.no_grad():
            vae.decode(lat)
            rows.clear()
            vae.decode(lat)
        top = sorted(((r["extra"], r["name"]) for r in rows), reverse=True)[:3]
        print(json.dumps({"kind": "channels_last_decode", "h": h, "w": w,
                          "conv_extra_max": max(r["extra"] for r in rows), "top": top}), flush=True)


if __name__ == "__main__":
    main()
