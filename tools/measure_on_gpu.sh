#!/usr/bin/env bash
# Measure on this machine's CUDA GPU what the simulator is checked against, into one folder (default
# docs/measurements/<gpu>-<date>). Random weights from the shipped configs, fp16, SDPA kernels as torch chooses.
#
# usage: PYTHONPATH=src bash tools/measure_on_gpu.sh [OUT] [PART ...]      (run from the repository root)
#
# Parts (default: all of them):
#   tests       tests/test_gpu.py: the real CudaMeter and NVML, which CI tests only through a scripted fake
#   sd15        SD v1.5 img2img profile records (safety checker on, as from_pretrained loads it): the four test
#               images and 512, 1024, 2048 px, each carrying the simulation of the same settings
#   traces      the allocator traces: 512 px at 10 steps, one VAE decode at 2048 and at 1200 x 1800
#   families    every other pipeline family at its default size and call, and at twice the size with 10 steps
#               (the peaks are in the VAE and the UNet's calls, not in their count), each under the allocator
#               trace; inpainting and SDXL img2img on a test image at their default size (inpainting with the
#               whole image masked); SDXL with the fp16-fix VAE. Each family is a lane of its own.
#   boundary    is fit's boundary the real allocator's? (8 and 12 GB cards emulated with
#               set_per_process_memory_fraction; tools/gpu_boundary.py)
#   convs       the per-convolution workspace tables (fp16; fp32, bf16 and batch 2 at two sizes)
#   components  per-component activation peaks, flash attention allowed and not
#   variants    whole-pipeline peaks with diffusers' memory-saving switches
#
# The parts (and the families) run side by side, each part's runs one after another. They do not disturb one
# another's figures: each run is its own process, and the caching allocator, torch.cuda's peaks and NVML's
# per-process figure (process_peak) are per process. Only a record's device_peak (NVML's memory.used of the
# whole device) counts the other lanes' processes too. Each lane's output goes to OUT/logs/LANE.log; OUT/env.json
# says what ran where. A part goes on when a run fails; the exit status is the last failure's (5: out of GPU
# memory, the record still written).
set -uo pipefail
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))") || exit 3
out=${1:-docs/measurements/$gpu-$(date +%F)}
shift || true
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests sd15 traces families boundary convs components variants)
mkdir -p "$out/logs"
python3 - "$out/env.json" "${parts[*]}" <<'EOF'
import json, platform, sys, time
import torch, transformers, diffusers
try:
    import pynvml
    pynvml.nvmlInit()
    driver = pynvml.nvmlSystemGetDriverVersion()
except Exception as error:  # NVML is optional; say why it is missing
    driver = f"unknown ({error})"
env = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": torch.cuda.get_device_name(),
       "capability": "sm%d%d" % torch.cuda.get_device_capability(),
       "total_memory": torch.cuda.get_device_properties(0).total_memory, "driver": driver,
       "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "torch": torch.__version__,
       "diffusers": diffusers.__version__, "transformers": transformers.__version__,
       "python": platform.python_version(), "parts": sys.argv[2].split(),
       "settings": {"cudnn.benchmark": torch.backends.cudnn.benchmark, "PYTORCH_CUDA_ALLOC_CONF": None,
                    "weights": "random", "dtype": "float16"}}
with open(sys.argv[1], "w") as f:
    json.dump(env, f, indent=1)
EOF

run() { "$@" || status=$?; }

part_tests() {
    if python3 -c "import pytest" 2>/dev/null; then
        run python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
    else
        echo "pytest is not installed here: tests/test_gpu.py not run" >&2
    fi
}

part_sd15() {
    mkdir -p "$out/profiles"
    for image in images/*.jp*g; do
        name=$(basename "${image%.*}")
        run python3 -m sdvram profile "$image" --weights random --safety-checker --json "$out/profiles/$name.json"
    done
    for size in 512 1024 2048; do
        run python3 -m sdvram profile --h "$size" --w "$size" --weights random --safety-checker \
            --json "$out/profiles/${size}x$size.json"
    done
}

part_traces() {
    mkdir -p "$out/profiles"
    run python3 tools/gpu_trace.py "$out/trace-512-steps10.pkl.gz" profile --h 512 --w 512 --weights random \
        --safety-checker --steps 10 --json "$out/profiles/512x512-steps10-traced.json"
    run python3 tools/gpu_trace.py "$out/trace-decode-2048.pkl.gz" --decode 2048 2048
    run python3 tools/gpu_trace.py "$out/trace-decode-1200x1800.pkl.gz" --decode 1200 1800
}

family() {  # one family: its default size and call, then twice the size at 10 steps
    local family=$1 side size
    case $family in
        sd21*) side=768 ;;
        sdxl*) side=1024 ;;
        *) side=512 ;;
    esac
    case $family in
        *inpaint|*img2img) size=(images/groceries--low-res.jpg) ;;
        *) size=(--h "$side" --w "$side") ;;
    esac
    run python3 tools/gpu_trace.py "$out/families/trace-$family-default.pkl.gz" profile "${size[@]}" \
        --pipeline "$family" --weights random --json "$out/families/$family-default.json"
    local double=$((2 * side))
    run python3 tools/gpu_trace.py "$out/families/trace-$family-$double.pkl.gz" profile --h "$double" \
        --w "$double" --pipeline "$family" --weights random --steps 10 --json "$out/families/$family-$double.json"
}

family_fp16_fix() {
    run python3 tools/gpu_trace.py "$out/families/trace-sdxl-txt2img-fp16-fix.pkl.gz" profile --h 1024 --w 1024 \
        --pipeline sdxl-txt2img --vae fp16-fix --weights random --json "$out/families/sdxl-txt2img-fp16-fix.json"
}

part_boundary() {
    run python3 tools/gpu_boundary.py > "$out/boundary.jsonl"
}

part_convs() {
    run python3 tools/gpu_convs.py > "$out/convs.jsonl"
    run env DTYPE=float32 SKIP_CL=1 python3 tools/gpu_convs.py 512x512 1024x1024 > "$out/convs-fp32.jsonl"
    run env DTYPE=bfloat16 SKIP_CL=1 python3 tools/gpu_convs.py 512x512 1024x1024 > "$out/convs-bf16.jsonl"
    run env BATCH=2 SKIP_CL=1 python3 tools/gpu_convs.py 768x768 > "$out/convs-fp16-batch2.jsonl"
}

part_components() {
    run python3 tools/gpu_components.py > "$out/components.jsonl"
}

part_variants() {
    run python3 tools/gpu_variants.py > "$out/variants.jsonl"
}

lane() {  # run "$@" in the background with its own status and log
    local name=$1
    shift
    ( status=0; "$@"; exit $status ) > "$out/logs/$name.log" 2>&1 &
    pids+=($!)
    names+=("$name")
}

pids=()
names=()
for part in "${parts[@]}"; do
    case $part in
        families)
            mkdir -p "$out/families"
            for name in sd15-txt2img sd15-inpaint sd21-txt2img sdxl-txt2img sdxl-img2img; do
                lane "family-$name" family "$name"
            done
            lane family-sdxl-txt2img-fp16-fix family_fp16_fix ;;
        tests|sd15|traces|boundary|convs|components|variants) lane "$part" "part_$part" ;;
        *) echo "unknown part '$part'; the parts are tests sd15 traces families boundary convs components variants" >&2
           exit 2 ;;
    esac
done
status=0
for i in "${!pids[@]}"; do
    if wait "${pids[$i]}"; then
        echo "${names[$i]}: done" >&2
    else
        code=$?
        status=$code
        echo "${names[$i]}: exit $code (see $out/logs/${names[$i]}.log)" >&2
    fi
done
for trace in "$out"/trace-*.pkl.gz; do
    [ -e "$trace" ] && { python3 tools/replay_trace.py "$trace" || status=$?; }
done
exit $status
