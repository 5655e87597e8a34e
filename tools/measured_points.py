"""Write src/sdvram/data/measured.json: the whole-run peaks measured on real GPUs (docs/measurements/*/: the
profile records and variants.jsonl), which `sdvram sweep --png` plots beside the simulated curve where the
settings match. The package carries this summary because an installed sdvram has no docs/ folder.

usage: python tools/measured_points.py
"""

from __future__ import annotations

import json
from pathlib import Path

from gpu_variants import SWITCHES

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ROOT / "docs" / "measurements"
OUT = ROOT / "src" / "sdvram" / "data" / "measured.json"


def main() -> None:
    points = []
    for folder in sorted(p for p in MEASURED.iterdir() if p.is_dir()):
        for path in sorted((folder / "profiles").glob("*.json")):
            record = json.loads(path.read_text())
            inputs, settings = record["inputs"], record["settings"]
            points.append({
                "source": f"{folder.name}/profiles/{path.name}", "gpu_name": record["environment"]["gpu_name"],
                "width": inputs["pipeline_width"], "height": inputs["pipeline_height"], "dtype": settings["dtype"],
                "batch": settings["batch"], "guidance": settings["guidance"],
                "safety_checker": settings["safety_checker"], "switches": [],
                "peak_allocated": record["peak_allocated"], "peak_reserved": record["peak_reserved"],
            })
        variants = folder / "variants.jsonl"
        for line in variants.read_text().splitlines() if variants.exists() else []:
            v = json.loads(line)
            switches = SWITCHES[v["variant"]]
            points.append({
                "source": f"{folder.name}/variants.jsonl ({v['variant']})", "gpu_name": "NVIDIA H200",
                "width": v["w"], "height": v["h"], "dtype": v["dtype"], "batch": v["batch"], "guidance": 5.0,
                "safety_checker": True,
                "switches": sorted(k if k != "offload" else f"{val.value}_offload" for k, val in switches.items()),
                "peak_allocated": v["peak_allocated"], "peak_reserved": v["peak_reserved"],
            })
    OUT.write_text(json.dumps({"points": points}, indent=1) + "\n")
    print(f"wrote {OUT.relative_to(ROOT)}: {len(points)} points")


if __name__ == "__main__":
    main()
