"""How far sdvram's answers have been seen to be from real runs, per GPU architecture: the band a verdict's margin
takes (``verdicts.py``). Pure Python; the figures are in ``data/evidence.json``, which ``tools/evidence.py`` writes
from the measurements in ``docs/measurements`` (this project's own runs, and public ones it trusts).

An architecture with evidence gets the largest relative error seen on it; one without gets the largest error seen
anywhere, and says so. The figures widen the margin; they never move an answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

EVIDENCE_FILE = Path(__file__).parent / "data" / "evidence.json"


@dataclass(frozen=True)
class Band:
    error: float  # the largest relative error seen (0.055 for 5.5%)
    source: str  # where it was seen, in words


@cache
def _document() -> dict[str, Any]:
    return dict(json.loads(EVIDENCE_FILE.read_text()))


def band_for(sm: int) -> Band:
    """The band of compute capability ``sm`` (e.g. 86)."""
    document = _document()
    seen = document["architectures"].get(str(sm))
    if seen is not None:
        return Band(seen["error"], f"sm{sm}: the largest error seen against {seen['runs']} real runs on it "
                                   f"({seen['where']})")
    worst = max(document["architectures"].items(), key=lambda item: item[1]["error"])
    return Band(worst[1]["error"], f"no real run on sm{sm} yet: the largest error seen anywhere (sm{worst[0]}, "
                                   f"{worst[1]['where']})")
