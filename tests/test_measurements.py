"""The simulator against real GPU runs, to the byte: every committed H200 profile record (docs/measurements: the
profiles, and the four test images again with flash attention disallowed) and every whole-pipeline variant,
simulated with its own settings on the CPU.

Each stage's peak allocated and allocated at its start must equal the measured bytes; the run's peak allocated,
peak reserved and nvidia-smi figure likewise, except where docs/measurements/README.md documents a residual
("Residuals"): there the simulation must stay within that many bytes of the measurement. The residuals are read
from that table, so the test and the documentation cannot drift apart. A failure names the record, the stage or
figure, and the bytes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.choices import DType  # noqa: E402
from sdvram.gpus import GPUS  # noqa: E402
from sdvram.requests import RunRequest, Settings, request_from_record  # noqa: E402
from sdvram.simulate import SimulateOptions, Simulator, simulator_for  # noqa: E402

from .conftest import MEASURED, MEASURED_FAMILIES, REPO, load_tool  # noqa: E402

README = REPO / "docs" / "measurements" / "README.md"
# profiles/ and flash-off/: SD v1.5 img2img (2026-11-26); families/: the other pipelines (2026-11-30)
RECORDS = sorted(path for folder in ("profiles", "flash-off") for path in (MEASURED / folder).glob("*.json")) + sorted(
    (MEASURED_FAMILIES / "families").glob("*.json"))
# The SD v1.5 profiles measured again on 2026-11-30 (another machine of the same kind, the same software)
AGAIN = sorted((MEASURED_FAMILIES / "profiles").glob("*.json"))
VARIANTS = [json.loads(line) for line in (MEASURED / "variants.jsonl").read_text().splitlines()]
# tools/gpu_variants.py's variants as the settings of the switches each turned on
SWITCHES = load_tool("gpu_variants").SWITCHES
PROMPT = load_tool("gpu_variants").PROMPT


def record_id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def variant_id(variant: dict) -> str:
    return f"variants/{variant['variant']}-{variant['w']}x{variant['h']}-b{variant['batch']}-{variant['dtype']}"


def documented_residuals() -> dict[tuple[str, str], int]:
    """(record, figure) -> bytes, from the "Residuals" table of docs/measurements/README.md (rows of
    ``| record | figure | +1,234 |``); every figure not listed there is exact."""
    section = README.read_text().split("### Residuals", 1)[1].split("\n#", 1)[0]
    found = {}
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and re.fullmatch(r"[+-]?[\d,]+", cells[2]):
            found[(cells[0], cells[1])] = int(cells[2].replace(",", ""))
    return found


RESIDUALS = documented_residuals()


def compare(record: str, figures: list[tuple[str, int, int]]) -> list[str]:
    """Each (figure, measured, simulated) against its documented residual (0 where none is documented)."""
    wrong = []
    for figure, measured, simulated in figures:
        allowed = abs(RESIDUALS.get((record, figure), 0))
        if abs(simulated - measured) > allowed:
            wrong.append(f"{record} {figure}: simulated {simulated:,} B, measured {measured:,} B "
                         f"({simulated - measured:+,} B; documented residual {allowed:,} B)")
    return wrong


def test_the_residual_table_is_read() -> None:
    # the README documents at least the known reserved residuals; an empty parse would make every check exact
    # silently only if the table's format changed, so the parse itself is checked
    assert ("profiles/2048x2048", "peak reserved") in RESIDUALS
    assert all(key[0].startswith(("profiles/", "flash-off/", "families/", "variants/")) for key in RESIDUALS)


@pytest.mark.parametrize("path", RECORDS, ids=record_id)
def test_h200_profile_is_reproduced_to_the_byte(path: Path) -> None:
    measured = json.loads(path.read_text())
    assert measured["environment"]["gpu_name"] == "NVIDIA H200"
    request = request_from_record(measured, REPO)
    simulated = simulator_for(request, GPUS["h200"]).run(request, SimulateOptions(GPUS["h200"]))
    assert [s.name for s in simulated.stages] == [s["name"] for s in measured["stages"]]
    figures = []
    for real, sim in zip(measured["stages"], simulated.stages, strict=True):
        figures += [(f"{real['name']} peak allocated", real["peak_allocated"], sim.peak_allocated),
                    (f"{real['name']} allocated at start", real["allocated_start"], sim.allocated_start)]
    assert simulated.peak_reserved is not None and simulated.predicted_nvidia_smi is not None
    figures += [("peak allocated", measured["peak_allocated"], simulated.peak_allocated),
                ("peak reserved", measured["peak_reserved"], simulated.peak_reserved),
                # nvidia-smi's figure for the process (NVML usedGpuMemory) = reserved + the CUDA context
                ("nvidia-smi", measured["process_peak"], simulated.predicted_nvidia_smi)]
    wrong = compare(record_id(path), figures)
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("path", AGAIN, ids=lambda path: path.stem)
def test_the_sd15_profiles_measured_again_are_the_same_to_the_byte(path: Path) -> None:
    """Four days and another machine later, the same settings gave the same bytes: every stage's start and peak,
    peak reserved and NVML's figure for the process. What the simulation is held to is repeatable."""
    again, first = json.loads(path.read_text()), json.loads((MEASURED / "profiles" / path.name).read_text())
    call = ("steps", "strength", "guidance", "batch", "seed", "safety_checker", "dtype", "weights")
    assert [again["settings"][k] for k in call] == [first["settings"][k] for k in call]
    size = ("width", "height", "prompt")
    assert [again["inputs"][k] for k in size] == [first["inputs"][k] for k in size]

    def figures(record: dict) -> tuple:
        return ([(s["name"], s["allocated_start"], s["peak_allocated"]) for s in record["stages"]],
                record["peak_reserved"], record["process_peak"])

    assert figures(again) == figures(first)


@pytest.fixture(scope="module")
def variant_simulators() -> dict[DType, Simulator]:
    return {}


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_every_measured_variant_is_reproduced(variant: dict, variant_simulators: dict) -> None:
    """Each line of variants.jsonl simulated with its settings (10 steps, strength 0.8, the safety checker on, as
    tools/gpu_variants.py builds the pipeline; the variants ran one after another in one process, so from the
    second on the cuBLAS workspaces were already held when the pipeline was built): what was allocated after
    loading, and the whole run's peak allocated and reserved."""
    dtype = DType(variant["dtype"])
    if dtype not in variant_simulators:
        variant_simulators[dtype] = Simulator(dtype=dtype, safety_checker=True)
    request = RunRequest(height=variant["h"], width=variant["w"], prompt=PROMPT, dtype=dtype,
                         settings=Settings(steps=variant["steps"], batch=variant["batch"], safety_checker=True,
                                           **SWITCHES[variant["variant"]]))
    options = SimulateOptions(GPUS["h200"], warm_process=variant["before_build"] > 0)
    simulated = variant_simulators[dtype].run(request, options)
    assert simulated.peak_reserved is not None
    wrong = compare(variant_id(variant), [
        ("loaded", variant["loaded"], simulated.stage("load").allocated_end),
        ("peak allocated", variant["peak_allocated"], simulated.peak_allocated),
        ("peak reserved", variant["peak_reserved"], simulated.peak_reserved)])
    assert not wrong, "\n".join(wrong)


def test_every_documented_residual_names_a_measurement() -> None:
    """A residual for a record or variant that no longer exists is a stale line of the README."""
    known = {record_id(p) for p in RECORDS} | {variant_id(v) for v in VARIANTS}
    assert {record for record, _ in RESIDUALS} <= known
