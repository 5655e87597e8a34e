"""Bytes as people read them, and the fit verdict, with figures worked by hand."""

from __future__ import annotations

import pytest

from sdvram.units import Units, format_bytes, format_signed_percent


def test_format_bytes_in_each_unit() -> None:
    assert format_bytes(3 * 1024**3 // 2, Units.gib) == "1.5000 GiB"
    assert format_bytes(2_500_000_000, Units.gb) == "2.5000 GB"
    assert format_bytes(2_132_470_614, Units.bytes) == "2,132,470,614 B"


def test_signed_percent() -> None:
    assert format_signed_percent(200, 250) == "+25.0%"
    assert format_signed_percent(200, 100) == "-50.0%"
    assert format_signed_percent(0, 100) == "n/a"


def test_fit_verdict_thresholds() -> None:
    pytest.importorskip("diffusers")
    from sdvram.simulate import FIT_ALLOWANCE, fit_verdict

    gib = 1024**3
    assert FIT_ALLOWANCE == gib
    assert fit_verdict(14 * gib, 15 * gib)["verdict"] == "fits"  # exactly the 1 GiB allowance left
    assert fit_verdict(14 * gib + 1, 15 * gib)["verdict"] == "tight"
    assert fit_verdict(15 * gib, 15 * gib)["verdict"] == "tight"
    assert fit_verdict(15 * gib + 1, 15 * gib)["verdict"] == "does not fit"
    assert fit_verdict(1, None) is None  # the CPU has no card to fit
