"""Bytes as people read them, and the fit verdict, with figures worked by hand."""

from __future__ import annotations

from sdvram.units import Units, format_bytes, format_number, format_signed_percent, format_size


def test_format_bytes_in_each_unit() -> None:
    assert format_bytes(3 * 1024**3 // 2, Units.gib) == "1.5000 GiB"
    assert format_bytes(2_500_000_000, Units.gb) == "2.5000 GB"
    assert format_bytes(2_132_470_614, Units.bytes) == "2,132,470,614 B"


def test_signed_percent() -> None:
    assert format_signed_percent(200, 250) == "+25.0%"
    assert format_signed_percent(200, 100) == "-50.0%"
    assert format_signed_percent(0, 100) == "n/a"


def test_sizes_are_labelled_width_first() -> None:
    assert format_size(800, 534) == "800 x 534 px (W x H)"
    assert format_number(3 * 1024**3 // 2) == "1.5000"
