"""Time the whole `sdvram estimate` process (interpreter start, imports, formula, table) and print the median.

Usage: python benchmarks/estimate.py [RUNS]   (default 20 runs of each case)
The target is "a fraction of a second" on a 2-core machine; this prints the figures, it asserts nothing.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time

CASES = {
    "sizes": ["estimate", "--h", "512", "--w", "512", "--tokens", "50"],
    "sizes --json": ["estimate", "--h", "2048", "--w", "2048", "--tokens", "77", "--json"],
    "--image (manifest prompt, tokenizer)": ["estimate", "--image", "images/bench--high-res.jpg"],
}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    script = shutil.which("sdvram")
    if script is None:
        sys.exit("sdvram is not installed; run the README's install command first")
    for name, args in CASES.items():
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run([script, *args], check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        print(f"sdvram {' '.join(args)}: median {statistics.median(times) * 1000:.0f} ms, "
              f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {runs} runs  [{name}]")


if __name__ == "__main__":
    main()
