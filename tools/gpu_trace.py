"""Record the CUDA caching allocator's event trace (alloc/free/segment) of a real run and save it gzipped.

usage: gpu_trace.py OUTFILE [--] SDVRAM-ARGS...  (the run is `sdvram SDVRAM-ARGS` under record_memory_history)
       gpu_trace.py OUTFILE --decode H W           (weights of the VAE + one decode at HxW)

Check a trace against the allocator model, on any machine: python tools/replay_trace.py OUTFILE
"""
import atexit
import gzip
import pickle
import sys

import torch

out = sys.argv[1]
torch.cuda.memory._record_memory_history(enabled="all", context=None, stacks="python", max_entries=2_000_000)


def dump():
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    for seg in snap.get("segments", []):
        for b in seg.get("blocks", []):
            b.pop("frames", None)
    with gzip.open(out, "wb") as f:
        pickle.dump({"device_traces": snap["device_traces"], "segments": snap["segments"],
                     "stats": torch.cuda.memory_stats()}, f)
    n = sum(len(t) for t in snap["device_traces"])
    print(f"trace: {n} events -> {out}", file=sys.stderr)


atexit.register(dump)
if sys.argv[2] == "--decode":
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL

    from sdvram.architecture import component_config

    h, w = int(sys.argv[3]), int(sys.argv[4])
    torch.set_default_dtype(torch.float16)
    with torch.device("cuda"):
        vae = AutoencoderKL.from_config(component_config("vae", "sd15")).eval().requires_grad_(False)
    torch.set_default_dtype(torch.float32)
    lat = torch.randn(1, 4, h // 8, w // 8, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        vae.decode(lat)
    torch.cuda.synchronize()
    print(f"decode {h}x{w}: peak allocated {torch.cuda.max_memory_allocated()}", file=sys.stderr)
else:
    import runpy

    sys.argv = ["sdvram"] + sys.argv[3 if sys.argv[2] == "--" else 2:]
    runpy.run_module("sdvram", run_name="__main__", alter_sys=True)
