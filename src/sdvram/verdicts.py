"""The answer to "does it fit my card?", in three words and a margin, the same for every command. Pure Python.

A simulation (or the calibrated closed form) gives the memory the run needs on the card: the peak reserved when
it fits, or what the allocator had to hold when a request could not be met. The verdict is:

- ``does not fit``: the simulated run fails on the card;
- ``fits``: it fits with at least the margin to spare;
- ``tight``: it fits in the simulation, with less than the margin to spare.

The margin is what the answer may be off by on that card: the evidence band of its architecture (the largest
relative error seen there against real runs, ``evidence.py``) of the memory decided on, plus how far the card's
CUDA context may be from the one assumed (0 where it was measured).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sdvram.evidence import Band, band_for
from sdvram.gpus import GpuSpec

FITS, TIGHT, DOES_NOT_FIT = "fits", "tight", "does not fit"
WORDS = (FITS, TIGHT, DOES_NOT_FIT)


@dataclass(frozen=True)
class Margin:
    """How far an answer on a card may be off."""

    band: Band  # the relative error of the architecture's evidence
    context: int  # bytes the CUDA context may differ by

    def of(self, need: int) -> int:
        """The margin in bytes for a run that needs ``need``."""
        return math.ceil(self.band.error * need) + self.context

    def to_json(self, need: int) -> dict[str, Any]:
        return {"bytes": self.of(need), "band": self.band.error, "band_source": self.band.source,
                "context_uncertainty": self.context}


def margin_for(gpu: GpuSpec) -> Margin:
    return Margin(band_for(gpu.sm), gpu.context_uncertainty)


def judge(fits: bool, need: int, usable: int, margin: Margin) -> str:
    """The verdict for a run that ``fits`` in the simulation (or not) needing ``need`` bytes of ``usable``."""
    if not fits:
        return DOES_NOT_FIT
    return FITS if usable - need >= margin.of(need) else TIGHT
