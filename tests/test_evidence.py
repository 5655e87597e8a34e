"""The evidence behind a verdict's margin (src/sdvram/evidence.py, data/evidence.json): the sm90 band against the
H200's measurements and their documented residuals, computed here; an architecture without evidence taking the
largest error anywhere; and every public measurement in docs/measurements/public simulated with its settings."""

from __future__ import annotations

import json

import pytest

from sdvram.evidence import band_for

from .conftest import REPO

PUBLIC = [json.loads(line) for path in sorted((REPO / "docs" / "measurements" / "public").glob("*.jsonl"))
          for line in path.read_text().splitlines()]
FIELDS = {"id", "source", "gpu", "gpu_name", "sm", "pipeline", "settings", "measured", "figure", "as_published",
          "versions", "trust", "why"}


def test_the_sm90_band_is_the_largest_relative_error_on_the_h200() -> None:
    """Every figure the simulation does not reproduce is in the README's residual table (tests/test_measurements.py
    holds it to that); the band is the largest of those residuals relative to the measured figure."""
    from .test_measurements import RECORDS, RESIDUALS, VARIANTS, record_id, variant_id

    measured = {}
    for path in RECORDS:
        record = json.loads(path.read_text())
        measured[record_id(path)] = {"peak allocated": record["peak_allocated"],
                                     "peak reserved": record["peak_reserved"]}
    for variant in VARIANTS:
        measured[variant_id(variant)] = {"peak allocated": variant["peak_allocated"],
                                         "peak reserved": variant["peak_reserved"]}
    errors = [abs(bytes_) / measured[record][figure] for (record, figure), bytes_ in RESIDUALS.items()
              if figure in ("peak allocated", "peak reserved")]
    assert band_for(90).error == pytest.approx(max(errors), abs=1e-5)  # 5.5%: the tiled 2048 x 2048 variant
    assert "sm90" in band_for(90).source


def test_an_architecture_without_evidence_takes_the_largest_error_anywhere() -> None:
    band = band_for(86)
    assert band.error == band_for(90).error and band.source.startswith("no real run on sm86 yet")


@pytest.mark.parametrize("line", PUBLIC, ids=[line["id"] for line in PUBLIC])
def test_every_public_measurement_is_compared_with_its_simulation(line: dict) -> None:
    """Each line says where it comes from and how far to trust it; simulated with its own settings, a trusted one
    (medium or high) is within its architecture's band, and a low-trust one counts for nothing (it is shown)."""
    pytest.importorskip("diffusers")
    import sys

    sys.path.insert(0, str(REPO / "tools"))
    from evidence import simulate_public  # tools/evidence.py: the settings as the line gives them

    assert FIELDS <= set(line) and line["source"]["repository"] and line["trust"] in ("low", "medium", "high")
    error = (simulate_public(line) - line["figure"]) / line["figure"]
    if line["trust"] != "low":
        assert abs(error) <= band_for(line["sm"]).error, line["id"]
    else:
        assert line["why"]  # why it does not count
