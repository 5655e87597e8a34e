"""Time the whole `sdvram estimate` process (interpreter start, imports, formula, table) and print the median, and
the peak host memory of reading a 16384 x 16384 PNG's size.

Usage: python benchmarks/estimate.py [RUNS]   (default 20 runs of each case)
Targets (issues): at most 0.15 s median for the plain estimate; an image of 16384 x 16384 under 100 MB of host
memory and 0.5 s. This prints the figures; it asserts nothing.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "sizes": ["estimate", "--h", "512", "--w", "512", "--tokens", "50"],
    "sizes --json": ["estimate", "--h", "2048", "--w", "2048", "--tokens", "77", "--json"],
    "image (manifest prompt, tokenizer)": ["estimate", "images/bench--high-res.jpg"],
}


def timed(script: str, args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([script, *args], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's install command first")
    for name, args in CASES.items():
        times = timed(script, args, runs)
        print(f"sdvram {' '.join(args)}: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {runs} runs  [{name}]")
    from PIL import Image

    with tempfile.TemporaryDirectory() as folder:
        for suffix in ("png", "jpg"):
            path = Path(folder) / f"huge.{suffix}"
            Image.radial_gradient("L").resize((16384, 16384)).convert("RGB").save(path)
            times = timed(script, ["estimate", str(path), "--tokens", "77"], max(3, runs // 4))
            # /usr/bin/time's %M is the command's own peak: this process's RUSAGE_CHILDREN would count the pages a
            # child inherited from this one (which holds the 16384 x 16384 image) before it exec'd sdvram
            proc = subprocess.run(["/usr/bin/time", "-f", "%M", script, "estimate", str(path), "--tokens", "77"],
                                  check=True, capture_output=True, text=True)
            rss = f"{int(proc.stderr.strip().splitlines()[-1]) / 1024:.0f} MiB"
            print(f"sdvram estimate <16384 x 16384 {suffix.upper()}, {path.stat().st_size / 1e6:.1f} MB>: median "
                  f"{statistics.median(times) * 1000:.0f} ms, peak host memory {rss} (max RSS of the process)")


if __name__ == "__main__":
    main()
