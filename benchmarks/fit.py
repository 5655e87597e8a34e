"""Time `sdvram fit`, the whole process (imports, building SD v1.5 on meta, the searches, the table), for cards
from 8 GB to 141 GB, and print the size each combination of switches found.

Usage: python benchmarks/fit.py [CARD ...]   (default: an 8 GB sm89 card, rtx3060, rtx4090, a6000, h200)
Targets, on the 2-core development machine: the whole command under 30 s for the full table (issue "Make it
fit"); 2.5 F for rtx3060 and 3 F for the H200 (issue "Answers in seconds": benchmarks/speed.py measures F and
prints those). Prints figures; asserts nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

CARDS = [["--vram", "8GB", "--arch", "sm89"], ["--gpu", "rtx3060"], ["--gpu", "rtx4090"], ["--gpu", "a6000"],
         ["--gpu", "h200"]]


def main(cards: list[list[str]]) -> None:
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's test install command first")
    for card in cards:
        start = time.perf_counter()
        proc = subprocess.run([script, "fit", *card, "--json"], check=True, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        data = json.loads(proc.stdout)
        sizes = ", ".join(f"{o['label']}: {o['width']}x{o['height']}" if o["fits"] else f"{o['label']}: none"
                          for o in data["options"])
        print(f"sdvram fit {' '.join(card)}: {elapsed:.1f} s (whole process) -- {sizes}")


if __name__ == "__main__":
    main([["--gpu", name] for name in sys.argv[1:]] or CARDS)
