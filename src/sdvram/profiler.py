"""``profile()``: run the real pipeline of a family on a device, every stage measured by a ``Meter``.

A thin layer over the run engine (``engine.py``): on a GPU the meter is the CUDA allocator's own statistics
and NVML's; on the CPU it is the live-tensor meter summing live bytes. Running out of memory (CUDA's
``OutOfMemoryError``, the CPU allocator's "can't allocate memory", numpy's or Python's ``MemoryError``)
ends the run; the record is still returned, with the stage it died in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from sdvram.accounting import LiveBytes
from sdvram.choices import Offload, Weights
from sdvram.engine import (
    Progress,
    StageRecorder,
    build_timeline,
    finish_record,
    new_record,
    resolve,
    run_instrumented,
    track_weights,
)
from sdvram.errors import InputError, NoCudaError
from sdvram.images import load_rgb
from sdvram.meters import CudaMeter, LiveTensorMeter, Meter
from sdvram.pipeline import apply_switches, build_order, build_pipeline
from sdvram.pipelines import IMAGE_AND_MASK
from sdvram.record import Record
from sdvram.requests import ProfileOptions, RunRequest, check_profile_options, check_switches_on_device
from sdvram.stages import label
from sdvram.units import format_bytes

CPU_OUT_OF_MEMORY = "can't allocate memory"  # c10's DefaultCPUAllocator: "DefaultCPUAllocator: can't allocate memory"


@dataclass
class ProfileResult:
    """The record, and the pipeline's output image (None when the run did not complete)."""

    record: Record
    image: Image.Image | None


def check_device(device: str) -> torch.device:
    """The torch device for ``device``, or NoCudaError when CUDA is asked for and absent."""
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise NoCudaError(
            "No CUDA device is available to torch {version}; set {device} to cpu to profile the same pipeline "
            "on the CPU, or use 'sdvram estimate' or 'sdvram simulate' to predict it.",
            params=("device",), version=torch.__version__)
    chosen = torch.device(device)
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise InputError("{device} {got}: this machine has {n} CUDA device(s), cuda:0 to cuda:{last}.",
                         params=("device",), got=device, n=count, last=count - 1)
    return chosen


def is_out_of_memory(exc: BaseException) -> bool:
    """Did this exception mean the device (or the host, for a CPU run) ran out of memory?"""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):  # numpy's _ArrayMemoryError is a MemoryError
        return True
    return isinstance(exc, RuntimeError) and CPU_OUT_OF_MEMORY in str(exc)


def profile(request: RunRequest, options: ProfileOptions, progress: Progress | None = None) -> ProfileResult:
    """Run the pipeline once on ``options.device`` and record every stage."""
    check_profile_options(options, request.architecture)
    check_switches_on_device(request.settings, options.device)
    formula = resolve(request)
    family = request.family
    device = check_device(options.device)
    on_gpu = device.type == "cuda"
    dtype = request.resolved_dtype(on_gpu)
    width, height = formula.seed.width, formula.seed.height
    picture = mask = None
    if family.takes_image:
        picture = (load_rgb(request.image, request.min_side) if request.image is not None
                   else synthetic_image(width, height))
    if family.inputs == IMAGE_AND_MASK:  # the whole image masked, unless a mask is given: memory follows sizes
        mask = (load_rgb(request.mask, request.min_side, mode="L") if request.mask is not None
                else Image.new("L", (width, height), 255))
    meter: Meter = (CudaMeter(device, timeline=options.timeline) if on_gpu
                    else LiveTensorMeter("cpu", LiveBytes(), timeline=options.timeline))
    model = options.resolved_model(family)
    record = new_record("profile", request, formula, device=str(device), dtype=dtype.value,
                        weights=options.weights.value, model=model, attention="auto")
    recorder = StageRecorder(meter)
    output: Any = None
    with meter:
        try:
            with recorder.stage("load"):
                # With CPU offload the models start on the CPU, as from_pretrained leaves them, and the switch
                # moves them to the device as they run; otherwise they are built on the device.
                offloaded = request.settings.offload is not Offload.none
                pipe = build_pipeline(family, device="cpu" if offloaded else str(device), dtype=dtype.value,
                                      weights=options.weights.value, model=model,
                                      architecture=request.architecture.value,
                                      safety_checker=request.settings.safety_checker, vae=request.vae)
                apply_switches(pipe, request.settings, str(device))
            if isinstance(meter, LiveTensorMeter):
                order = (build_order(family, request.settings.safety_checker) if options.weights is Weights.random
                         else tuple(pipe.components))
                track_weights(meter, pipe, order)
            output = run_instrumented(pipe, family, picture, formula.prompt or "", request.settings, recorder,
                                      progress, height=height - height % 8, width=width - width % 8, mask=mask)
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):
                raise
            failed = recorder.stage_name
            recorder.end(completed=False)
            record.status, record.failed_stage = "out_of_memory", failed
        record.environment.update(meter.environment())
        record.device_peak = meter.device_peak()
        record.process_peak = getattr(meter, "process_peak", None)
    finish_record(record, recorder, formula, request.settings)
    series = meter.timeline_series()
    if series:
        record.timeline = build_timeline(series, recorder.marks, None, unit=(
            "allocator events (each alloc and free) in order" if on_gpu
            else "aten ops in the order the pipeline ran them"))
    image = output.images[0] if record.status == "completed" and output is not None else None
    return ProfileResult(record, image)


def synthetic_image(width: int, height: int) -> Image.Image:
    """A deterministic colour gradient of the given size, for runs given a size instead of an image."""
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
                               Image.new("L", (width, height), 128)))


def oom_message(record: Record) -> str:
    """The one sentence for exit code 5."""
    capacity = record.environment.get("gpu_total_memory")
    where = "GPU memory" if record.environment.get("device") == "cuda" else "memory"
    return (
        f"Out of {where} in the {label(record.failed_stage)} stage: {format_bytes(record.peak_allocated)} "
        f"allocated at the peak so far, the seed formula estimated {format_bytes(record.formula['bytes']['total'])}"
        + (f", the card holds {format_bytes(capacity)}" if capacity else "")
        + "; try a smaller image, a batch of 1, or 'sdvram simulate' to see what fits."
    )
