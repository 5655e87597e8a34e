#!/usr/bin/env bash
# Measure SD v1.5 img2img (random weights, fp16, the seed's reference settings, safety checker on as from_pretrained
# loads it), and every other pipeline family at its default size and at twice it, on this machine's CUDA GPU and write everything the simulator is checked against into one folder
# (default docs/measurements/<gpu>-<date>): profile records (each carries the simulation of the same
# settings), the per-convolution workspace tables, the memory-saving variants, and the allocator traces; and first
# the GPU tests (tests/test_gpu.py: the real CudaMeter and NVML, which CI tests only through a scripted fake).
# Run from the repository root; with no install, PYTHONPATH=src. Each part goes on when another fails; the
# exit status is the last failure's (5: out of GPU memory, the record still written).
set -uo pipefail
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))") || exit 3
out=${1:-docs/measurements/$gpu-$(date +%F)}
mkdir -p "$out/profiles"
status=0
run() { "$@" || status=$?; }
if python3 -c "import pytest" 2>/dev/null; then
    run python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
else
    echo "pytest is not installed here: tests/test_gpu.py not run" >&2
fi
for image in images/*.jp*g; do
    name=$(basename "${image%.*}")
    run python3 -m sdvram profile "$image" --weights random --safety-checker --json "$out/profiles/$name.json"
done
for size in 512 1024 2048; do
    run python3 -m sdvram profile --h "$size" --w "$size" --weights random --safety-checker \
        --json "$out/profiles/${size}x$size.json"
done
run python3 tools/gpu_trace.py "$out/trace-512-steps10.pkl.gz" profile --h 512 --w 512 --weights random \
    --safety-checker --steps 10 --json "$out/profiles/512x512-steps10-traced.json"
run python3 tools/gpu_trace.py "$out/trace-decode-2048.pkl.gz" --decode 2048 2048
run python3 tools/gpu_trace.py "$out/trace-decode-1200x1800.pkl.gz" --decode 1200 1800
# Every pipeline family (random weights from the shipped configs, fp16): its default size with its default call,
# and twice the size at 10 steps (the peaks are in the VAE and the UNet's calls, not in their count), each under
# the allocator trace; the inpainting run on the test image with the whole image masked.
mkdir -p "$out/families"
for family in sd15-txt2img sd15-inpaint sd21-txt2img sdxl-txt2img sdxl-img2img; do
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
    double=$((2 * side))
    run python3 tools/gpu_trace.py "$out/families/trace-$family-$double.pkl.gz" profile --h "$double" \
        --w "$double" --pipeline "$family" --weights random --steps 10 --json "$out/families/$family-$double.json"
done
run python3 tools/gpu_trace.py "$out/families/trace-sdxl-txt2img-fp16-fix.pkl.gz" profile --h 1024 --w 1024 \
    --pipeline sdxl-txt2img --vae fp16-fix --weights random --json "$out/families/sdxl-txt2img-fp16-fix.json"
# Is fit's boundary the real allocator's? (8 and 12 GB cards emulated with set_per_process_memory_fraction)
run python3 tools/gpu_boundary.py > "$out/boundary.jsonl"
run python3 tools/gpu_convs.py > "$out/convs.jsonl"
run env DTYPE=float32 SKIP_CL=1 python3 tools/gpu_convs.py 512x512 1024x1024 > "$out/convs-fp32.jsonl"
run env DTYPE=bfloat16 SKIP_CL=1 python3 tools/gpu_convs.py 512x512 1024x1024 > "$out/convs-bf16.jsonl"
run env BATCH=2 SKIP_CL=1 python3 tools/gpu_convs.py 768x768 > "$out/convs-fp16-batch2.jsonl"
run python3 tools/gpu_components.py > "$out/components.jsonl"
run python3 tools/gpu_variants.py > "$out/variants.jsonl"
python3 tools/replay_trace.py "$out"/trace-*.pkl.gz || status=$?
exit $status
