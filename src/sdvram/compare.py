"""A profile on a GPU carries the simulation of the same settings for the same card, so every real run
checks the simulator. Composed here, above both: ``profiler`` and ``simulate`` do not import each other."""

from __future__ import annotations

from dataclasses import replace

from sdvram.engine import Progress
from sdvram.profiler import ProfileResult, profile
from sdvram.requests import ProfileOptions, RunRequest


def profile_and_simulate(request: RunRequest, options: ProfileOptions, progress: Progress | None = None,
                         simulate_too: bool = True) -> ProfileResult:
    """``profile()``; on a CUDA device (and ``simulate_too``) the record's ``compared`` is the simulation
    of the same request for that card (it costs seconds)."""
    result = profile(request, options, progress)
    record = result.record
    if simulate_too and record.environment.get("device") == "cuda":
        from sdvram.gpus import spec_for_device
        from sdvram.simulate import SimulateOptions, simulate

        env = record.environment
        major, minor = (int(v) for v in str(env["compute_capability"]).split("."))
        gpu = spec_for_device(str(env["gpu_name"]), (major, minor), int(env["gpu_total_memory"]))
        same = replace(request, dtype=request.resolved_dtype(True) if request.dtype is None else request.dtype)
        record.compared = simulate(same, SimulateOptions(gpu))
    return result
