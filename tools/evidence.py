"""Write src/sdvram/data/evidence.json: per GPU architecture, the largest relative error of the simulation against
real runs, which a verdict's margin takes (src/sdvram/evidence.py), and print the evidence table of
docs/measurements/README.md.

The runs: this project's own measurement folders (docs/measurements/<gpu>-<date>/: every profile record's peak
allocated and peak reserved, every variant's), and the public measurements of docs/measurements/public/*.jsonl
that are trusted (medium or high): each is simulated with its own settings on its card. Low-trust lines are shown
in the table and count for nothing. The figures widen the margin; they never move an answer.

usage: python tools/evidence.py     (needs the profile extra; about a minute)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tools"))

from sdvram.choices import DType, Offload  # noqa: E402
from sdvram.evidence import EVIDENCE_FILE  # noqa: E402
from sdvram.gpus import GPUS, find_gpu  # noqa: E402
from sdvram.pipelines import find_family  # noqa: E402
from sdvram.requests import RunRequest, Settings, request_from_record, settings_for  # noqa: E402
from sdvram.simulate import SimulateOptions, simulator_for  # noqa: E402

MEASURED = ROOT / "docs" / "measurements"
TRUSTED = ("medium", "high")
GIB = 1024**3


def own_runs() -> list[dict[str, Any]]:
    """(sm, where, relative errors) of every own measurement: records and variants."""
    from gpu_variants import PROMPT, SWITCHES

    runs = []
    for folder in sorted(p for p in MEASURED.iterdir() if p.is_dir() and p.name != "public"):
        paths = sorted(path for sub in ("profiles", "flash-off", "families")
                       for path in (folder / sub).glob("*.json"))
        for path in paths:
            record = json.loads(path.read_text())
            gpu = find_gpu(record["environment"]["gpu_name"].replace("NVIDIA ", ""))
            request = request_from_record(record, ROOT)
            simulated = simulator_for(request, gpu).run(request, SimulateOptions(gpu))
            runs.append({"sm": gpu.sm, "where": f"{folder.name}/{path.parent.name}/{path.stem}", "errors": [
                (simulated.peak_allocated - record["peak_allocated"]) / record["peak_allocated"],
                (simulated.peak_reserved - record["peak_reserved"]) / record["peak_reserved"]]})
        variants = folder / "variants.jsonl"
        for line in variants.read_text().splitlines() if variants.exists() else []:
            v = json.loads(line)
            dtype = DType(v["dtype"])
            request = RunRequest(height=v["h"], width=v["w"], prompt=PROMPT, dtype=dtype,
                                 settings=Settings(steps=v["steps"], batch=v["batch"], safety_checker=True,
                                                   **SWITCHES[v["variant"]]))
            gpu = GPUS["h200"]
            options = SimulateOptions(gpu, warm_process=v["before_build"] > 0)
            simulated = simulator_for(request, gpu).run(request, options)
            runs.append({"sm": gpu.sm, "where": f"{folder.name}/variants/{v['variant']}-{v['w']}-b{v['batch']}",
                         "errors": [(simulated.peak_allocated - v["peak_allocated"]) / v["peak_allocated"],
                                    (simulated.peak_reserved - v["peak_reserved"]) / v["peak_reserved"]]})
    return runs


def simulate_public(line: dict[str, Any]) -> int:
    """The simulated figure comparable with a public line's (its ``measured``)."""
    settings = dict(line["settings"])
    height, width, dtype = settings.pop("height"), settings.pop("width"), DType(settings.pop("dtype"))
    if "offload" in settings:
        settings["offload"] = Offload(settings["offload"])
    family = find_family(line["pipeline"])
    request = RunRequest(height=height, width=width, dtype=dtype, pipeline=family.name,
                         settings=settings_for(family, **settings))
    gpu = GPUS[line["gpu"]]
    record = simulator_for(request, gpu).run(request, SimulateOptions(gpu))
    measured = line["measured"]
    if measured.startswith("peak allocated"):
        return record.peak_allocated
    if measured.startswith("nvidia-smi"):
        return record.predicted_nvidia_smi or 0
    return record.peak_reserved or 0  # a reserved figure, or one whose meaning is not stated


def public_lines() -> list[dict[str, Any]]:
    lines = []
    for path in sorted((MEASURED / "public").glob("*.jsonl")):
        for text in path.read_text().splitlines():
            line = json.loads(text)
            simulated = simulate_public(line)
            lines.append({**line, "simulated": simulated, "error": (simulated - line["figure"]) / line["figure"]})
    return lines


def main() -> None:
    architectures: dict[str, dict[str, Any]] = {}

    def seen(sm: int, error: float, where: str) -> None:
        entry = architectures.setdefault(str(sm), {"error": 0.0, "runs": 0, "where": ""})
        entry["runs"] += 1
        if abs(error) >= entry["error"]:
            entry["error"], entry["where"] = round(abs(error), 5), where

    for run in own_runs():
        for error in run["errors"]:
            seen(run["sm"], error, run["where"])
    for key in architectures:  # each run was counted once per figure
        architectures[key]["runs"] //= 2
    public = public_lines()
    for line in public:
        if line["trust"] in TRUSTED:
            seen(line["sm"], line["error"], line["id"])
    EVIDENCE_FILE.write_text(json.dumps({"made_by": "tools/evidence.py", "architectures": architectures},
                                        indent=1) + "\n")
    print(f"wrote {EVIDENCE_FILE.relative_to(ROOT)}")
    print("| architecture | runs | largest error | where |")
    print("|---|---:|---:|---|")
    for sm, entry in sorted(architectures.items()):
        print(f"| sm{sm} | {entry['runs']} | {entry['error']:.2%} | {entry['where']} |")
    print()
    print("| public measurement | card | pipeline | published | simulated | error | trust |")
    print("|---|---|---|---|---:|---:|---|")
    for line in public:
        published = line["as_published"].replace("|", "/")
        print(f"| {line['id']} | {line['gpu_name']} (sm{line['sm']}) | {line['pipeline']} | {published} | "
              f"{line['simulated'] / GIB:.2f} GiB | {line['error']:+.1%} | {line['trust']} |")


if __name__ == "__main__":
    main()
