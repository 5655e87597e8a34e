"""Rendering results for people (rich tables on stdout) and programs (JSON documents). Computes nothing."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from sdvram.estimate import Estimate
from sdvram.formula import OVERHEAD_DENOMINATOR, OVERHEAD_NUMERATOR, STAGE_LABELS
from sdvram.units import Units, format_bytes

TOKEN_SOURCES = {"--prompt": " (counted from --prompt)", "manifest": " (the image's manifest prompt)",
                 "default": " (default: the pipeline pads to 77)"}
OVERHEAD_LABEL = f"x{OVERHEAD_NUMERATOR / OVERHEAD_DENOMINATOR:g} overhead"


def estimate_table(result: Estimate, units: Units) -> Group:
    """One row per seed-formula stage, the peak marked, then the overhead and the total."""
    seed = result.seed
    base_note = "UNet + VAE + text encoder" + (" + safety checker" if seed.safety_checker else "")
    source = TOKEN_SOURCES.get(result.tokens_source, "")
    heading = Text(
        f"Seed formula, SD v1.5 img2img: {seed.width}x{seed.height} px, {seed.tokens} tokens{source}"
        + (f", batch {seed.batch}" if seed.batch > 1 else ""),
        style="italic",
    )
    table = Table()
    table.add_column("stage")
    table.add_column("memory", justify="right")
    table.add_column("note")
    table.add_row(STAGE_LABELS["base"], format_bytes(seed.base, units), f"fp16 weights: {base_note}")
    for name, value in seed.stage_bytes().items():
        if name == "base":
            continue
        peak = name == seed.peak_stage
        table.add_row(
            STAGE_LABELS[name] + (" *" if peak else ""),
            format_bytes(value, units),
            "peak activation stage" if peak else "",
            style="bold" if peak else None,
        )
    table.add_section()
    table.add_row(
        OVERHEAD_LABEL, format_bytes(seed.overhead, units), f"on base + {STAGE_LABELS[seed.peak_stage]}"
    )
    table.add_row("Total", format_bytes(seed.total, units), "", style="bold")
    return Group(heading, table)


def estimate_document(result: Estimate) -> dict[str, Any]:
    """The JSON document of ``sdvram estimate --json``: inputs, then every figure in bytes."""
    seed = result.seed
    return {
        "method": "seed",
        "inputs": {
            "height": seed.height,
            "width": seed.width,
            "tokens": seed.tokens,
            "tokens_source": result.tokens_source,
            "untruncated_tokens": result.untruncated_tokens,
            "batch": seed.batch,
            "safety_checker": seed.safety_checker,
            "image": result.image,
            "prompt": result.prompt,
        },
        "bytes": {**seed.stage_bytes(), "overhead": seed.overhead, "total": seed.total},
        "peak_stage": seed.peak_stage,
        "overhead_factor": OVERHEAD_NUMERATOR / OVERHEAD_DENOMINATOR,
        "notes": list(result.notes),
    }


def to_json(document: dict[str, Any]) -> str:
    """The one JSON document a ``--json`` option prints or writes."""
    return json.dumps(document, indent=2)
