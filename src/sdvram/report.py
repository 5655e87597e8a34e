"""Rendering results for people (rich tables on stdout) and programs (JSON documents). Computes nothing."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from sdvram.estimate import Estimate
from sdvram.formula import OVERHEAD_DENOMINATOR, OVERHEAD_NUMERATOR, STAGE_LABELS
from sdvram.record import Record, StageRecord
from sdvram.units import Units, format_bytes, format_signed_percent

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


def record_table(record: Record, units: Units) -> Group:
    """Per stage: the seed formula, the measured (or simulated) activation, peak allocated and reserved,
    and the formula's error; then the whole run. A measured record that carries its simulation gets a
    column of simulated activations beside the measured ones."""
    simulated = record.simulation
    measured = "simulated" if record.kind == "simulate" else "measured"
    inputs, settings = record.inputs, record.settings
    build = (f"{settings['architecture']}, {settings['dtype']}" if record.kind == "simulate"
             else f"{settings['architecture']}, {settings['weights']} weights, {settings['dtype']}")
    heading = Text(
        f"{'Simulated' if record.kind == 'simulate' else 'Profiled'} SD v1.5 img2img ({build}) on "
        f"{_device_name(record)}: {inputs['width']}x{inputs['height']} px, {inputs['prompt_tokens']} prompt "
        f"tokens, {settings['steps']} steps x strength {settings['strength']:g}, guidance {settings['guidance']:g}, "
        f"batch {settings['batch']}",
        style="italic",
    )
    table = Table()
    table.add_column("stage", no_wrap=True)
    table.add_column("seed formula", justify="right")
    if simulated is not None:
        table.add_column("simulated activation", justify="right")
        table.add_column("simulation error", justify="right")
    table.add_column(f"{measured} activation", justify="right")
    table.add_column("peak allocated", justify="right")
    reserved = record.peak_reserved is not None
    if reserved:
        table.add_column("peak reserved", justify="right")
    table.add_column("formula error", justify="right")
    peak_stage = record.peak_stage
    for stage in record.stages:
        observed = stage_observed(stage)
        label = stage.label + (" *" if stage.name == peak_stage else "") + ("" if stage.completed else " (died)")
        cells = [label, _maybe(stage.formula, units)]
        if simulated is not None:
            twin = simulated.stage(stage.name)
            cells.append(_maybe(stage_observed(twin) if twin else None, units))
            cells.append(format_signed_percent(observed, stage_observed(twin)) if twin else "")
        cells += [
            format_bytes(observed, units),
            format_bytes(stage.peak_allocated, units),
            *([_maybe(stage.peak_reserved, units)] if reserved else []),
            format_signed_percent(observed, stage.formula) if stage.formula is not None else "",
        ]
        table.add_row(*cells, style="bold" if stage.name == peak_stage else None)
    table.add_section()
    formula_total = record.formula["bytes"]["total"]
    total_cells = ["whole run (peak)", format_bytes(formula_total, units)]
    if simulated is not None:
        total_cells += [format_bytes(simulated.peak_allocated, units) + " peak",
                        format_signed_percent(record.peak_allocated, simulated.peak_allocated)]
    total_cells += [
        "",
        format_bytes(record.peak_allocated, units),
        *([_maybe(record.peak_reserved, units)] if reserved else []),
        format_signed_percent(record.peak_allocated, formula_total),
    ]
    table.add_row(*total_cells, style="bold")
    table.caption = "error: (prediction - observed) / observed; for load, the resident weights"
    lines: list[Any] = [heading, table]
    formula_peak = STAGE_LABELS[record.formula["peak_stage"]]
    lines.append(Text(
        f"Peak stage: formula {formula_peak}; {measured} {_stage_label(record, peak_stage)}. "
        f"The formula's total includes its x1.2 overhead; 'whole run' compares it with the peak allocated."
    ))
    unet = record.stage("unet")
    if unet is not None and unet.unet_calls:
        replayed = record.extra.get("unet_calls_replayed", 0)
        lines.append(Text(
            f"The UNet ran {unet.unet_calls} times; its peak fell in call {unet.peak_call}."
            + (f" ({replayed} calls with the same shapes as an earlier one were replayed from it.)" if replayed else "")
        ))
    if record.device_peak is not None:
        lines.append(Text(
            f"NVML peak (nvidia-smi's memory.used, CUDA context and other processes included): "
            f"{format_bytes(record.device_peak, units)}"
            + (f"; this process: {format_bytes(record.process_peak, units)}" if record.process_peak else "")
        ))
    lines += [Text(f"- {note}") for note in record.notes]
    return Group(*lines)


def stage_observed(stage: StageRecord) -> int:
    """The figure compared with the formula: the resident weights after loading, else the activation."""
    return stage.allocated_end if stage.name == "load" else stage.activation


def _device_name(record: Record) -> str:
    env = record.environment
    return str(env.get("gpu_name") or env.get("simulated_gpu") or env.get("device", "?"))


def _stage_label(record: Record, name: str | None) -> str:
    stage = record.stage(name) if name else None
    return stage.label if stage else str(name)


def _maybe(value: int | None, units: Units) -> str:
    return "" if value is None else format_bytes(value, units)


def simulation_notes(record: Record, units: Units) -> Group:
    """Does it fit, which attention kernels ran, and what the simulation does not model."""
    lines: list[Text] = []
    fit = record.extra.get("fit")
    if fit:
        style = {"fits": "green", "tight": "yellow", "does not fit": "bold red"}[fit["verdict"]]
        lines.append(Text(
            f"{record.environment['simulated_gpu']}: predicted peak {format_bytes(fit['peak'], units)} of "
            f"{format_bytes(fit['capacity'], units)} ({fit['share']:.0%}): {fit['verdict']} "
            f"(keeping {format_bytes(fit['allowance'], units)} for the CUDA context and workspaces).",
            style=style,
        ))
    kernels: dict[str, list[str]] = {}
    for call in record.extra.get("attention_calls", []):
        kernels.setdefault(call["backend"], []).append(str(call["head_dim"]))
    if kernels:
        lines.append(Text("Attention kernels: " + "; ".join(
            f"{backend} (head dims {', '.join(sorted(set(dims), key=int))})" for backend, dims in kernels.items())))
    lines.append(Text("Not modelled:"))
    lines += [Text(f"- {item}") for item in record.extra.get("not_modelled", [])]
    return Group(*lines)


EXPLAIN_GROUPS = 12  # module groups listed per peak; the rest are summed in one line


def explain_tables(record: Record, units: Units, groups: int = EXPLAIN_GROUPS) -> Group:
    """For the overall peak and each stage's peak: the live tensors grouped by the module that created
    them, largest first, summing to the peak."""
    explained = record.extra.get("explain", {})
    parts: list[Any] = []
    order = ["overall", *[s.name for s in record.stages]]
    for name in order:
        if name not in explained:
            continue
        data = explained[name]
        title = "the overall peak" if name == "overall" else f"the {_stage_label(record, name)} peak"
        table = Table(title=f"Live at {title}: {format_bytes(data['total'], units)}", title_justify="left")
        table.add_column("created by", no_wrap=True)
        table.add_column("tensors", justify="right")
        table.add_column("size", justify="right")
        table.add_column("largest")
        shown = data["groups"][:groups]
        for group in shown:
            largest = ", ".join(f"{'x'.join(map(str, t['shape']))} {t['dtype']}" for t in group["tensors"][:2])
            table.add_row(group["module"], str(group["count"]), format_bytes(group["bytes"], units), largest)
        rest = data["groups"][groups:]
        if rest:
            table.add_row(f"{len(rest)} other modules", str(sum(g["count"] for g in rest)),
                          format_bytes(sum(g["bytes"] for g in rest), units), "")
        table.add_section()
        table.add_row("total", str(sum(g["count"] for g in data["groups"])), format_bytes(data["total"], units), "",
                      style="bold")
        parts.append(table)
    return Group(*parts)
