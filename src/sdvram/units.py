"""Byte counts as people read them. Everything inside sdvram is bytes; this is the only place they become
GiB (1024^3, as nvidia-smi's MiB are binary) or GB (10^9), and every printed figure carries its unit (in the
cell, or in its column's header)."""

from __future__ import annotations

from sdvram.choices import Units

GIB = 1024**3  # binary gibibyte: what nvidia-smi and torch.cuda report (in MiB) are multiples of
GB = 10**9  # decimal gigabyte: what GPU vendors print on the box

__all__ = ["GB", "GIB", "Units", "format_bytes", "format_number", "format_signed_percent", "format_size",
           "unit_label"]


def unit_label(units: Units = Units.gib) -> str:
    return {Units.gib: "GiB", Units.gb: "GB", Units.bytes: "bytes"}[units]


def format_number(value: int, units: Units = Units.gib) -> str:
    """``value`` bytes in ``units``, without the unit (for a column whose header names it)."""
    if units is Units.bytes:
        return f"{value:,}"
    return f"{value / (GIB if units is Units.gib else GB):,.4f}"


def format_bytes(value: int, units: Units = Units.gib) -> str:
    """``value`` bytes as text with its unit: ``"2.5515 GiB"``, ``"2.7396 GB"`` or ``"2,739,... B"``."""
    if units is Units.bytes:
        return f"{value:,} B"
    return f"{format_number(value, units)} {unit_label(units)}"


def format_signed_percent(measured: int, predicted: int) -> str:
    """How far ``predicted`` is from ``measured``, as a percentage of ``measured`` ("+12.5%")."""
    if measured == 0:
        return "n/a"
    return f"{(predicted - measured) / measured * 100:+.1f}%"


def format_size(width: int, height: int) -> str:
    """An image size, labelled: ``"800 x 534 px (W x H)"``."""
    return f"{width} x {height} px (W x H)"
