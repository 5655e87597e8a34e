"""Byte counts as people read them. Everything inside sdvram is bytes; this is the only place they become
GiB (1024^3, as nvidia-smi's MiB are binary) or GB (10^9), and every printed figure carries its unit."""

from __future__ import annotations

from enum import Enum

GIB = 1024**3  # binary gibibyte: what nvidia-smi and torch.cuda report (in MiB) are multiples of
GB = 10**9  # decimal gigabyte: what GPU vendors print on the box


class Units(str, Enum):
    gib = "gib"
    gb = "gb"
    bytes = "bytes"


def format_bytes(value: int, units: Units = Units.gib) -> str:
    """``value`` bytes as text with its unit: ``"2.5515 GiB"``, ``"2.7396 GB"`` or ``"2,739,..." bytes``."""
    if units is Units.bytes:
        return f"{value:,} B"
    divisor, label = (GIB, "GiB") if units is Units.gib else (GB, "GB")
    return f"{value / divisor:,.4f} {label}"


def format_signed_percent(measured: int, predicted: int) -> str:
    """How far ``predicted`` is from ``measured``, as a percentage of ``measured`` ("+12.5%")."""
    if measured == 0:
        return "n/a"
    return f"{(predicted - measured) / measured * 100:+.1f}%"
