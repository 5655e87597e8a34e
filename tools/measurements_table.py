"""Print the markdown tables of docs/measurements/README.md: every profile record of a measurement folder (profiles/
and flash-off/) beside the seed formula and the simulation of its own settings for the card it was measured on;
then every line of its variants.jsonl (whole-pipeline runs with diffusers' switches) beside its simulation; then
the residuals: every figure the simulation does not reproduce to the byte (tests/test_measurements.py reads that
table from the README and holds the simulation within it).

usage: python tools/measurements_table.py [FOLDER]    (default docs/measurements/h200-2026-11-26)
Needs the profile extra (it runs the simulator); the GPU key is taken from the folder's records' GPU name.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gpu_variants import PROMPT, SWITCHES

from sdvram.choices import DType
from sdvram.gpus import GPUS, find_gpu
from sdvram.requests import RunRequest, Settings, request_from_record
from sdvram.simulate import SimulateOptions, Simulator, simulator_for

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[1]


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.4f}"


RESIDUALS: list[tuple[str, str, int]] = []  # (record, figure, simulated - measured) where not 0


def note(record: str, figure: str, measured: int, simulated: int) -> None:
    if simulated != measured:
        RESIDUALS.append((record, figure, simulated - measured))


def main(folder: Path) -> None:
    records = [(path, json.loads(path.read_text()))
               for path in sorted(path for sub in ("profiles", "flash-off", "families")
                                  for path in (folder / sub).glob("*.json"))]
    gpu = find_gpu(records[0][1]["environment"]["gpu_name"].replace("NVIDIA ", "")) if records else GPUS["h200"]
    print("| record | stage | seed formula | simulated | measured | simulated - measured |")
    print("|---|---|---:|---:|---:|---:|")
    for path, record in records:
        request = request_from_record(record, ROOT)
        simulated = simulator_for(request, gpu).run(request, SimulateOptions(gpu))
        name = f"{path.parent.name}/{path.stem}"
        for stage in record["stages"]:
            twin = simulated.stage(stage["name"])
            note(name, f"{stage['name']} peak allocated", stage["peak_allocated"], twin.peak_allocated)
            note(name, f"{stage['name']} allocated at start", stage["allocated_start"], twin.allocated_start)
            print(f"| {name} | {twin.label} | {gib(stage.get('formula'))} | {gib(twin.peak_allocated)} | "
                  f"{gib(stage['peak_allocated'])} | {twin.peak_allocated - stage['peak_allocated']:+,} B |")
        note(name, "peak allocated", record["peak_allocated"], simulated.peak_allocated)
        note(name, "peak reserved", record["peak_reserved"], simulated.peak_reserved)
        print(f"| {name} | whole run: peak allocated | {gib(record['formula']['bytes']['total'])} | "
              f"{gib(simulated.peak_allocated)} | {gib(record['peak_allocated'])} | "
              f"{simulated.peak_allocated - record['peak_allocated']:+,} B |")
        share = (simulated.peak_reserved - record["peak_reserved"]) / record["peak_reserved"] * 100
        print(f"| {name} | peak reserved | | {gib(simulated.peak_reserved)} | {gib(record['peak_reserved'])} | "
              f"{share:+.2f}% |")
        smi = simulated.predicted_nvidia_smi or 0
        note(name, "nvidia-smi", record["process_peak"], smi)
        share = (smi - record["process_peak"]) / record["process_peak"] * 100
        print(f"| {name} | nvidia-smi, this process | | {gib(smi)} | {gib(record['process_peak'])} | "
              f"{share:+.2f}% |")
    variants(folder, gpu)
    print()
    print("| record | figure | simulated - measured (bytes) |")
    print("|---|---|---:|")
    for record, figure, difference in RESIDUALS:
        print(f"| {record} | {figure} | {difference:+,} |")


def variants(folder: Path, gpu) -> None:  # type: ignore[no-untyped-def]
    path = folder / "variants.jsonl"
    if not path.exists():
        return
    print()
    print("| variant | W x H | batch | dtype | measured peak allocated | simulated | error | measured peak reserved "
          "| simulated | error |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|")
    simulators: dict[DType, Simulator] = {}
    for line in path.read_text().splitlines():
        v = json.loads(line)
        dtype = DType(v["dtype"])
        simulator = simulators.setdefault(dtype, Simulator(dtype=dtype, safety_checker=True))
        request = RunRequest(height=v["h"], width=v["w"], prompt=PROMPT, dtype=dtype,
                             settings=Settings(steps=v["steps"], batch=v["batch"], safety_checker=True,
                                               **SWITCHES[v["variant"]]))
        simulated = simulator.run(request, SimulateOptions(gpu, warm_process=v["before_build"] > 0))
        name = f"variants/{v['variant']}-{v['w']}x{v['h']}-b{v['batch']}-{v['dtype']}"
        note(name, "loaded", v["loaded"], simulated.stage("load").allocated_end)
        note(name, "peak allocated", v["peak_allocated"], simulated.peak_allocated)
        note(name, "peak reserved", v["peak_reserved"], simulated.peak_reserved)
        allocated = (simulated.peak_allocated - v["peak_allocated"]) / v["peak_allocated"] * 100
        reserved = (simulated.peak_reserved - v["peak_reserved"]) / v["peak_reserved"] * 100
        print(f"| {v['variant']} | {v['w']} x {v['h']} | {v['batch']} | {v['dtype']} | {gib(v['peak_allocated'])} | "
              f"{gib(simulated.peak_allocated)} | {allocated:+.3f}% | {gib(v['peak_reserved'])} | "
              f"{gib(simulated.peak_reserved)} | {reserved:+.2f}% |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "measurements" / "h200-2026-11-26")
