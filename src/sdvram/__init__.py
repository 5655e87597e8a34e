"""sdvram: how much GPU memory Stable Diffusion needs (SD 1.5, 2.1 and SDXL pipelines), and why.

The public API is small and light (no torch import): ``estimate`` evaluates the seed formula.
"""

from __future__ import annotations

from sdvram.estimate import Estimate, estimate
from sdvram.formula import SeedEstimate


def __getattr__(name: str) -> str:
    # Read lazily: importlib.metadata costs ~30 ms, and `sdvram estimate` should start fast.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("sdvram")
        except PackageNotFoundError:  # a source tree run without an install (PYTHONPATH=src)
            return "0+unknown"
    raise AttributeError(name)

__all__ = ["Estimate", "SeedEstimate", "__version__", "estimate"]
