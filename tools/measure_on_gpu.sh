#!/usr/bin/env bash
# Profile SD v1.5 (random weights, fp16, the seed's reference settings) on this machine's CUDA GPU for the
# four test images and 512, 1024 and 2048 px squares; write one JSON record per run into the folder given
# (default docs/measurements). Each profile also simulates the same settings. Run from the repository root;
# with no install, PYTHONPATH=src. Exit codes are sdvram's (5: out of GPU memory, the record still written).
set -uo pipefail
out=${1:-docs/measurements}
mkdir -p "$out"
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name().replace(' ', '-'))") || exit 3
status=0
for image in images/*.jp*g; do
    name=$(basename "${image%.*}")
    python3 -m sdvram profile "$image" --weights random --json "$out/$gpu--$name.json" || status=$?
done
for size in 512 1024 2048; do
    python3 -m sdvram profile --h "$size" --w "$size" --weights random --json "$out/$gpu--${size}x$size.json" \
        || status=$?
done
exit $status
