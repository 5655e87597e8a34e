"""The simulator against real GPU runs: every committed H200 profile record (docs/measurements) simulated
with its own settings, on the CPU. Targets from the issue: each stage's peak allocated and the whole run's
within 2%, peak reserved within 5%; the whole-pipeline variants measured without switches within 3%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.choices import DType  # noqa: E402
from sdvram.gpus import GPUS  # noqa: E402
from sdvram.requests import RunRequest, Settings, request_from_record  # noqa: E402
from sdvram.simulate import SimulateOptions, Simulator  # noqa: E402

from .conftest import MEASURED, REPO  # noqa: E402

PROFILES = sorted((MEASURED / "profiles").glob("*.json"))


def request_of(record: dict) -> RunRequest:
    return request_from_record(record, REPO)


def within(measured: int, simulated: int, share: float) -> bool:
    return abs(simulated - measured) <= share * measured


@pytest.mark.parametrize("path", PROFILES, ids=[p.stem for p in PROFILES])
def test_h200_profile_is_reproduced_stage_by_stage(path: Path, sd15_with_checker: Simulator) -> None:
    measured = json.loads(path.read_text())
    assert measured["environment"]["gpu_name"] == "NVIDIA H200"
    simulated = sd15_with_checker.run(request_of(measured), SimulateOptions(GPUS["h200"]))
    assert [s.name for s in simulated.stages] == [s["name"] for s in measured["stages"]]
    for real, sim in zip(measured["stages"], simulated.stages, strict=True):
        assert within(real["peak_allocated"], sim.peak_allocated, 0.02), real["name"]
        assert within(real["allocated_start"], sim.allocated_start, 0.02), real["name"]
    assert within(measured["peak_allocated"], simulated.peak_allocated, 0.02)
    assert within(measured["peak_reserved"], simulated.peak_reserved, 0.05)
    # nvidia-smi's figure for the process (NVML usedGpuMemory) = reserved + the CUDA context
    assert within(measured["process_peak"], simulated.predicted_nvidia_smi, 0.05)


VARIANTS = [json.loads(line) for line in (MEASURED / "variants.jsonl").read_text().splitlines()]
BASELINES = [v for v in VARIANTS if v["variant"] == "baseline"]


@pytest.mark.parametrize("variant", BASELINES, ids=lambda v: f"{v['w']}x{v['h']}-b{v['batch']}-{v['dtype']}")
def test_variants_without_switches_are_reproduced(variant: dict) -> None:
    dtype = DType(variant["dtype"])
    simulator = Simulator(dtype=dtype, safety_checker=True)  # tools/gpu_variants.py builds with the checker
    request = RunRequest(height=variant["h"], width=variant["w"], prompt="a photo of a truck parked on a street",
                         dtype=dtype, settings=Settings(steps=variant["steps"], batch=variant["batch"],
                                                        safety_checker=True))
    simulated = simulator.run(request, SimulateOptions(GPUS["h200"]))
    assert within(variant["peak_allocated"], simulated.peak_allocated, 0.03)
    assert within(variant["peak_reserved"], simulated.peak_reserved, 0.05)
