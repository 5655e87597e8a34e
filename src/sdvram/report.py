"""Rendering results for people: rich tables for stdout. Computes nothing; every figure comes from the
result objects (``Estimate``, ``Record``) in bytes and is turned into text here. JSON documents are the
results' own ``to_json``.

Tables are laid out for 80 columns: numeric cells carry no unit, the column header names it.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from sdvram.calibrated import Calibrated
from sdvram.estimate import Estimate
from sdvram.formula import OVERHEAD_DENOMINATOR, OVERHEAD_NUMERATOR
from sdvram.pipelines import DEFAULT, find_family
from sdvram.record import Record
from sdvram.requests import switch_label, switches_on
from sdvram.stages import STAGES, label, term_label
from sdvram.units import Units, format_bytes, format_number, format_signed_percent, format_size, unit_label
from sdvram.verdicts import DOES_NOT_FIT, FITS, TIGHT

TOKEN_SOURCES = {"tokens": "given", "prompt": "counted from the prompt", "manifest": "the image's manifest prompt",
                 "default prompt": "the default prompt"}
OVERHEAD_LABEL = f"x{OVERHEAD_NUMERATOR / OVERHEAD_DENOMINATOR:g} overhead"
EXPLAIN_GROUPS = 12  # module groups listed per peak; the rest are summed in one line
MODULE_WIDTH = 34  # characters of a module path in --explain tables, so that the numbers fit 80 columns
LARGEST_WIDTH = 22  # characters of its "what" cell: a shape and dtype, or a workspace's name
NOT_MODELLED = (
    "Memory other processes hold on the card, and the driver's own reservations (nvidia-smi's memory.used "
    "for the whole device exceeds this process's figure by a few hundred MiB).",
    "cuDNN engines that add a split-reduction scratch to the transform workspace on some shapes (measured on "
    "the H200: 2.5 to 16 MiB, e.g. the 512-channel 3x3 convolutions of 192 x 192 feature maps).",
    "The scheduler's timesteps on the GPU (a few hundred bytes; kept on the host in the simulation).",
    "Fragmentation from other allocation orders: PyTorch's allocator places blocks by address, and the model "
    "places new segments one above the other where cudaMalloc may not.",
)


SHORT_STAGE = {"vae_encode": "VAE enc.", "vae_decode": "VAE dec.", "unet": "UNet", "text_encoder": "text enc.",
               "safety_checker": "checker", "load": "load"}  # the sweep table's narrow "peak in" column
SLOW_MARK = " *"  # beside sequential offload in the tables; a note says why
def to_json(document: dict[str, Any]) -> str:
    """The one JSON document a ``--json`` option prints or writes."""
    return json.dumps(document, indent=2)


def estimate_table(result: Estimate, units: Units) -> Group:
    """The answers first (the seed formula's total, then the calibrated peak on the card), then one row per
    stage with the seed formula's term beside the calibrated stage peak, then the totals. Without a calibrated
    answer, the seed formula's table alone."""
    seed = result.seed
    if not result.seed_formula_applies:  # nothing but the two sentences: neither answer exists for this pipeline
        family = result.family
        return Group(
            Text(f"Seed formula: does not apply to {family.title} ({family.name}); it specifies SD v1.5 img2img.",
                 style="bold"),
            calibrated_line(result, units),
            Text(f"{family.title}, {format_size(seed.width, seed.height)}: `sdvram simulate --pipeline "
                 f"{family.name}` gives its answer.", style="italic"))
    base_note = "UNet + VAE + text encoder" + (" + safety checker" if seed.safety_checker else "")
    source = TOKEN_SOURCES.get(result.tokens_source, result.tokens_source)
    cal = result.calibrated if isinstance(result.calibrated, Calibrated) else None
    lines: list[Any] = [Text(f"Seed formula total: {format_bytes(seed.total, units)} "
                             f"(peak activation stage: {term_label(seed.peak_stage)})", style="bold")]
    if result.gpu is not None:
        lines.append(calibrated_line(result, units))
    lines.append(Text(
        f"SD v1.5 img2img, {format_size(seed.width, seed.height)}, {seed.tokens} prompt tokens ({source})"
        + (f", batch {seed.batch}" if seed.batch > 1 else "")
        + (f"\ncalibrated for {result.gpu.key} (sm{result.gpu.sm}), {result.dtype}, switches: "
           + switch_label(result.switches) if result.gpu is not None and cal is not None else "")
        + "\nsafety checker " + ("counted (as from_pretrained loads it)" if seed.safety_checker
                                 else "not counted (as the seed's formula)"),
        style="italic",
    ))
    if result.prompt is not None and result.tokens_source != "tokens":
        lines.append(Text(f"prompt: {result.prompt!r}", style="italic", overflow="ellipsis", no_wrap=True))
    unit = unit_label(units)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("stage")
    table.add_column(f"seed formula\n{unit}" if cal is not None else unit, justify="right")
    if cal is not None:
        table.add_column(f"calibrated\npeak {unit}", justify="right")
    table.add_column("note")

    def row(label: str, term: int | None, calibrated: int | None, notes: list[str], style: str | None = None
            ) -> None:
        cells = [label, "" if term is None else format_number(term, units)]
        if cal is not None:
            cells.append("" if calibrated is None else format_number(calibrated, units))
        table.add_row(*cells, "; ".join(notes), style=style)

    terms = seed.stage_bytes()
    tag = "seed: " if cal is not None else ""  # which answer a note is about, where there are two
    top = max(cal.stages, key=lambda n: cal.stages[n]) if cal is not None else None
    for stage in STAGES:
        if stage.formula is None and (cal is None or stage.name not in cal.stages):
            continue
        seed_peak = stage.formula == seed.peak_stage
        notes = [f"{tag}fp16 weights: {base_note}"] if stage.name == "load" else []
        notes += [f"{tag}peak activation stage"] if seed_peak else []
        notes += ["calibrated: peak stage"] if stage.name == top else []
        row(stage.label + (" *" if seed_peak else ""), terms.get(stage.formula) if stage.formula else None,
            cal.stages[stage.name] if cal is not None else None, notes,
            "bold" if seed_peak or stage.name == top else None)
    table.add_section()
    row(OVERHEAD_LABEL, seed.overhead, None, [f"{tag}on base + {term_label(seed.peak_stage)}"])
    row("total", seed.total, cal.peak_allocated if cal is not None else None,
        ["calibrated: peak allocated"] if cal is not None else [], "bold")
    if cal is not None and result.gpu is not None and result.nvidia_smi is not None:
        capped = result.reserved is not None and result.reserved < cal.peak_reserved
        row("peak reserved", None, result.reserved, ["torch.cuda.max_memory_reserved"
                                                     + (", on the card (its cache released)" if capped else "")])
        row("nvidia-smi", None, result.nvidia_smi,
            [f"reserved + CUDA context ({format_bytes(result.gpu.context, units)})"])
    lines.append(table)
    if cal is not None:
        lines.append(Text(
            "seed formula: the seed document's terms, activations on top of the base, as it defines them. "
            "calibrated: each stage's peak allocated, weights included: the simulator's closed form. Checked "
            f"against `sdvram simulate` on sizes it was not fitted on: allocated within {cal.allocated_error:.1%}, "
            f"reserved within {cal.reserved_error:.1%}"
            + (" (of the run's need; on the card the allocator releases its cache: shown capped)"
               if result.reserved is not None and result.reserved < cal.peak_reserved else "")
            + (" (this size is outside the 64 to 4096 px fitted: extrapolated)." if cal.extrapolated else "."),
            style="italic"))
    return Group(*lines)


def calibrated_line(result: Estimate, units: Units) -> Text:
    """The calibrated answer in one line: the peak nvidia-smi would show, and whether the card holds it."""
    cal, gpu = result.calibrated, result.gpu
    if gpu is None or not isinstance(cal, Calibrated):
        return Text(f"Calibrated: none: {cal or 'no card given'}.", style="bold yellow")
    smi = format_bytes(result.nvidia_smi or 0, units)
    text = f"Calibrated: {smi} on nvidia-smi, {format_bytes(cal.peak_allocated, units)} allocated"
    if result.verdict is None:
        return Text(text, style="bold")
    style = {FITS: "bold green", DOES_NOT_FIT: "bold red"}.get(result.verdict, "bold yellow")
    said = {FITS: f"fits {gpu.key}", DOES_NOT_FIT: f"does not fit {gpu.key}"}.get(
        result.verdict, f"tight on {gpu.key} (within the margin: simulate it)")
    return Text(f"{text}: {said}", style=style)


def answer_line(record: Record, units: Units) -> Text:
    """The first line: the verdict on the card in its three words, with the memory it was decided on (kept under
    80 columns); without a card, the peak."""
    stage = label(record.peak_stage)
    where = "simulated" if record.kind == "simulate" else "measured"
    peak = format_bytes(record.peak_allocated, units)
    sim = record.simulation
    if sim is not None and sim.fit is not None:
        fit = sim.fit
        card = sim.gpu if sim.gpu != "custom" else sim.gpu_name
        usable, need = format_bytes(fit.capacity, units), format_bytes(fit.decided_on, units)
        if fit.verdict == FITS:
            return Text(f"Fits {card}: needs {need} of {usable} usable ({stage})", style="bold green")
        if fit.verdict == TIGHT:
            spare = format_bytes(fit.capacity - fit.decided_on, units)
            return Text(f"Tight on {card}: needs {need} of {usable} usable, {spare} spare", style="bold yellow")
        return Text(f"Does not fit {card}: needs {need}, {usable} usable ({label(fit.failed_stage)})",
                    style="bold red")
    if record.status == "out_of_memory":
        return Text(f"Out of memory in the {label(record.failed_stage)} stage: {peak} allocated at the peak so far",
                    style="bold red")
    return Text(f"Peak {peak} allocated ({where}, {stage})", style="bold")


def verdict_lines(record: Record, units: Units) -> list[Text]:
    """Why the verdict is what it is: the figure it was decided on, the margin and where it comes from, what the
    card's memory went to, and for a run that fails with allocated memory below the card, why."""
    sim = record.simulation
    fit = sim.fit if sim is not None else None
    if sim is None or fit is None:
        return []
    margin = fit.margin or {}
    gib = functools.partial(format_bytes, units=units)
    lines = [Text(f"Usable: {gib(fit.card_memory)} on the card, less the CUDA context ({gib(fit.context)}) and "
                  f"what other processes hold ({gib(fit.held_by_others)}, --reserve): {gib(fit.capacity)}.")]
    if fit.fits:
        lines.append(Text(
            f"Decided on the peak reserved on the card, {gib(fit.decided_on)} (torch.cuda.max_memory_reserved): "
            f"{gib(fit.capacity - fit.decided_on)} to spare; the margin is {gib(margin.get('bytes', 0))}: "
            f"{margin.get('band', 0):.1%} ({margin.get('band_source', '')}) plus "
            f"{gib(margin.get('context_uncertainty', 0))} for the CUDA context."))
        if fit.verdict == TIGHT:
            lines.append(Text("Tight: it fits in the simulation by less than the margin; a switch below makes room.",
                              style="yellow"))
        return lines
    lines.append(Text(
        f"Decided on what the allocator had to hold when a request could not be met: {gib(fit.decided_on)} "
        f"reserved with the segment it needed, of {gib(fit.capacity)} usable."))
    if fit.fragmented:
        lines.append(Text(
            f"Only {gib(fit.allocated_at_failure or 0)} was allocated then: a request of "
            f"{gib(fit.failed_request or 0)} could not be placed because the free memory was in cached blocks too "
            "small for it (fragmentation).", style="red"))
    if fit.expandable is not None:
        lines.append(Text(
            f"With PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (PyTorch's cure for fragmentation), estimated from "
            f"the peak allocated: {fit.expandable}."))
    return lines


def record_view(record: Record, units: Units, verbose: bool = False) -> Group:
    """The answer line, the settings, one row per stage beside the seed formula, then the notes."""
    inputs, settings = record.inputs, record.settings
    compared = record.compared
    unit = unit_label(units)
    device = record.environment.get("gpu_name") or record.environment.get("simulated_gpu") or settings.device
    build = f"{settings.architecture}, {settings.dtype}" + (
        f", {settings.weights} weights" if record.kind == "profile" else "")
    switches = switches_on(settings.vae_slicing, settings.vae_tiling, settings.attention_slicing, settings.offload)
    family = find_family(settings.pipeline)
    formula = record.seed_formula_applies  # the seed formula's columns only where it is the specification
    heading = Text(
        f"{'Simulated' if record.kind == 'simulate' else 'Profiled'} {family.title} ({build}"
        + (f", VAE {settings.vae}" if settings.vae else "") + f") on {device}:\n"
        f"{format_size(inputs.width, inputs.height)}, {settings.steps} steps"
        + (f" x strength {settings.strength:g}" if family.takes_image else "")
        + f", guidance {settings.guidance:g}, batch {settings.batch}"
        + (f", safety checker {'on' if settings.safety_checker else 'off'}" if family.has_safety_checker else "")
        + (f"; mask {inputs.mask}" if inputs.mask else "")
        + (f"; switches: {switch_label(switches)}" if switches else ""),
        style="italic",
    )
    prompt = Text(f"prompt ({TOKEN_SOURCES.get(inputs.prompt_source, inputs.prompt_source)}, "
                  f"{inputs.prompt_tokens} tokens): {inputs.prompt!r}", style="italic", overflow="ellipsis",
                  no_wrap=True)
    errors = record.seed_formula_applies or compared is not None
    table = Table(box=box.SIMPLE_HEAD, caption=f"figures in {unit}"
                  + ("; error: (prediction - observed) / observed" if errors else ""))
    observed = "simulated" if record.kind == "simulate" else "measured"
    table.add_column("stage", no_wrap=True)
    if formula:
        table.add_column("seed formula", justify="right")
    if compared is not None:
        table.add_column("measured peak", justify="right")
        table.add_column("simulated peak", justify="right")
        table.add_column("sim. error", justify="right")
    else:
        table.add_column(f"{observed} activation", justify="right")
        table.add_column("peak allocated", justify="right")
        if record.peak_reserved is not None:
            table.add_column("peak reserved", justify="right")
    if formula:
        table.add_column("formula error", justify="right")
    peak_stage = record.peak_stage
    for stage in record.stages:
        name = stage.label + (" *" if stage.name == peak_stage else "") + ("" if stage.completed else " (died)")
        if stage.switches:  # which switches acted in the stage, on a second line of the cell
            name += "\n  " + switch_label(stage.switches, short=True)
        cells = [name, _maybe(stage.formula, units)] if formula else [name]
        if compared is not None:
            twin = compared.stage(stage.name)
            cells += [format_number(stage.peak_allocated, units), _maybe(twin.peak_allocated if twin else None, units),
                      format_signed_percent(stage.peak_allocated, twin.peak_allocated) if twin else ""]
        else:
            cells += [format_number(stage.observed, units), format_number(stage.peak_allocated, units)]
            if record.peak_reserved is not None:
                cells.append(_maybe(stage.peak_reserved, units))
        if formula:
            cells.append(format_signed_percent(stage.observed, stage.formula) if stage.formula is not None else "")
        table.add_row(*cells, style="bold" if stage.name == peak_stage else None)
    table.add_section()
    total = record.formula["bytes"]["total"]
    cells = ["whole run", format_number(total, units)] if formula else ["whole run"]
    if compared is not None:
        cells += [format_number(record.peak_allocated, units), format_number(compared.peak_allocated, units),
                  format_signed_percent(record.peak_allocated, compared.peak_allocated)]
    else:
        cells += ["", format_number(record.peak_allocated, units)]
        if record.peak_reserved is not None:
            cells.append(_maybe(record.peak_reserved, units))
    if formula:
        cells.append(format_signed_percent(record.peak_allocated, total))
    table.add_row(*cells, style="bold")
    lines: list[Any] = [answer_line(record, units), heading, prompt, table]
    if formula:
        lines.append(Text(f"The formula's peak stage is {term_label(record.formula['peak_stage'])}; the {observed} "
                          f"peak is in the {label(peak_stage)} stage. For the weights row the figure compared is the "
                          "weights resident after loading; elsewhere the activation (peak less the stage's start)."))
    else:
        lines.append(Text(f"The {observed} peak is in the {label(peak_stage)} stage. The activation is the peak less "
                          "the stage's start; for the weights row, the weights resident after loading."))
    unet = record.stage("unet")
    if unet is not None and unet.unet_calls:
        replayed = record.simulation.unet_calls_replayed if record.simulation else 0
        lines.append(Text(
            f"The UNet ran {unet.unet_calls} times; its peak fell in call {unet.peak_call}."
            + (f" ({replayed} calls with the same shapes as an earlier one were replayed from its log.)"
               if replayed else "")))
    lines += _device_lines(record, units)
    if record.simulation is not None:
        lines += _simulation_lines(record, units, verbose)
    lines += [Text(f"- {note}") for note in record.notes]
    return Group(*lines)


def _device_lines(record: Record, units: Units) -> list[Text]:
    lines = []
    if record.peak_reserved is not None and record.kind == "profile":
        lines.append(Text(f"Peak reserved (torch.cuda.max_memory_reserved): "
                          f"{format_bytes(record.peak_reserved, units)}."))
    if record.device_peak is not None:
        lines.append(Text(
            f"NVML peak (nvidia-smi's memory.used for the device, CUDA context and other processes included): "
            f"{format_bytes(record.device_peak, units)}"
            + (f"; this process: {format_bytes(record.process_peak, units)}." if record.process_peak else ".")))
    return lines


def _simulation_lines(record: Record, units: Units, verbose: bool) -> list[Text | Group]:
    sim = record.simulation
    assert sim is not None
    lines: list[Text | Group] = [Text(f"Card: {sim.gpu_name}.")] if sim.fit is not None else []
    if record.peak_reserved is not None:
        lines.append(Text(
            f"Predicted: peak reserved {format_bytes(record.peak_reserved, units)} "
            f"(torch.cuda.max_memory_reserved); nvidia-smi for this process "
            f"{format_bytes(record.predicted_nvidia_smi or 0, units)} (reserved + the CUDA context of "
            f"{format_bytes(sim.context or 0, units)})."))
    lines += verdict_lines(record, units)
    if sim.fit is not None and not sim.fit.fits:
        fit = sim.fit
        lines.append(Text(f"On the {sim.gpu_name} the first request that would not fit is "
                          f"{fit.failed_what} ({format_bytes(fit.failed_request or 0, units)}) in the "
                          f"{label(fit.failed_stage)} stage.", style="red"))
    if sim.advice is not None:
        lines.append(advice_table(sim.gpu_name, sim.advice, units))
    if sim.workspaces:
        names = {"cudnn": "largest cuDNN convolution workspace", "cublas": "cuBLAS workspace",
                 "cublaslt": "cuBLASLt workspace"}
        lines.append(Text("Library workspaces: " + "; ".join(
            f"{names.get(k, k)} {format_bytes(v, units)}" for k, v in sim.workspaces.items()) + "."))
    kernels: dict[str, set[int]] = {}
    for call in sim.attention_calls:
        kernels.setdefault(call["backend"], set()).add(call["head_dim"])
    if kernels:
        lines.append(Text("Attention kernels: " + "; ".join(
            f"{backend} (head dims {', '.join(map(str, sorted(dims)))})" for backend, dims in kernels.items()) + "."))
    lines += [Text(f"Assumed: {note}") for note in sim.assumptions]
    if verbose:
        family = find_family(record.settings.pipeline)
        lines.append(Text(f"Checked on real hardware for {family.name}: {family.checked}."))
        lines.append(Text("Not modelled (docs/simulate.md):"))
        lines += [Text(f"- {item}") for item in NOT_MODELLED]
    return lines


def advice_table(gpu_name: str, advice: list[dict[str, Any]], units: Units) -> Group:
    """What each useful combination of switches does to a run that does not fit, cheapest first."""
    table = Table(box=box.SIMPLE_HEAD, title=f"The same run with diffusers' memory-saving switches on the {gpu_name}",
                  title_justify="left", caption=f"figures in {unit_label(units)}")
    table.add_column("switches, cheapest first")
    table.add_column("fits", justify="center")
    table.add_column("peak allocated", justify="right")
    table.add_column("peak reserved", justify="right")
    for option in advice:
        table.add_row(switch_label(option["switches"], short=True) + (SLOW_MARK if option["slow"] else ""),
                      "yes" if option["fits"] else "no", _maybe(option["peak_allocated"], units),
                      _maybe(option["peak_reserved"], units), style="green" if option["fits"] else None)
    fitting = [o for o in advice if o["fits"]]
    if fitting:
        verdict = Text(f"Cheapest that fits: {fitting[0]['label']}." + (
            " Sequential CPU offload moves every layer's weights over the bus at every call: expect it to run "
            "many times slower." if fitting[0]["slow"] else ""), style="bold")
        if any(o["slow"] for o in advice) and not fitting[0]["slow"]:
            verdict.append(f"\n{SLOW_MARK.strip()} slow: every layer's weights cross the bus at every call.",
                           style="not bold")
    else:
        verdict = Text("No combination of switches makes this run fit: use a smaller image or batch (sdvram fit "
                       "finds the largest size that fits), or a card with more memory.", style="bold red")
    return Group(table, verdict)


def fit_table(result: Any, units: Units) -> Group:
    """``sdvram fit``: the largest image per combination of switches, cheapest first, and the notes."""
    data = result.to_json()
    w, h = data["aspect"]
    fitting = [o for o in data["options"] if o["fits"]]
    if fitting:
        best = max(fitting, key=lambda o: (o["width"] or 0) * (o["height"] or 0))
        none = data["options"][0]
        answer = Text((f"Largest with no switches: {none['width']} x {none['height']}; "
                       if none["fits"] else "Nothing fits with no switches; ")
                      + f"largest: {best['width']} x {best['height']} with {best['label']}"
                      + (" (slow)" if best["slow"] else ""), style="bold")
    else:
        answer = Text(f"Nothing fits the {data['gpu_name']}, with any switches.", style="bold red")
    own = data.get("image")
    if own is not None:  # the image's own size first, in the words simulate uses for the same run
        word = {FITS: "fits", TIGHT: "is tight on", DOES_NOT_FIT: "does not fit"}[own["verdict"]]
        answer = Text(f"{own['width']} x {own['height']} {word} {data['gpu']} with no switches (needs "
                      f"{format_bytes(own['decided_on'], units)} of {format_bytes(own['capacity'], units)} usable)\n",
                      style={FITS: "bold green", TIGHT: "bold yellow"}.get(own["verdict"], "bold red")) + answer
    family = find_family(data.get("pipeline", DEFAULT))
    heading = Text(f"Simulated, {family.title}: aspect {w}:{h}, batch {data['batch']}, {data['dtype']}"
                   + (f", safety checker {'on' if data['safety_checker'] else 'off'}" if family.has_safety_checker
                      else "") + f"\ncard: {data['gpu_name']}, "
                   f"{format_bytes(data['capacity'], units)} usable of {format_bytes(data['card_memory'], units)}",
                   style="italic")
    table = Table(box=box.SIMPLE_HEAD, caption=f"figures in {unit_label(units)}; 8 px more on the long side does "
                  "not fit")
    table.add_column("switches, cheapest first")
    table.add_column("largest W x H", justify="right")
    table.add_column("peak allocated", justify="right")
    table.add_column("peak reserved", justify="right")
    for option in data["options"]:
        size = f"{option['width']} x {option['height']}" if option["fits"] else "does not fit"
        table.add_row(switch_label(option["switches"], short=True) + (SLOW_MARK if option["slow"] else ""), size,
                      _maybe(option["peak_allocated"], units), _maybe(option["peak_reserved"], units))
    notes = []
    if not data["options"][0]["fits"]:
        notes.append(f"The weights alone do not fit: {format_bytes(data['weights'], units)} of weights, "
                     f"{format_bytes(data['capacity'], units)} usable on the card; "
                     + ("with CPU offload they need not all be on the card at once." if fitting
                        else "not even CPU offload makes SD v1.5 fit this card."))
    if any(o["slow"] for o in fitting):
        notes.append(f"{SLOW_MARK.strip()} Sequential CPU offload moves every layer's weights over the bus at every "
                     "call: expect it to run many times slower.")
    tight = [o for o in fitting if o.get("verdict") == TIGHT]
    if tight:
        which = "Every size above is" if len(tight) == len(fitting) else (
            "The sizes with " + ", ".join(o["label"] for o in tight) + " are")
        largest_margin = max(o["margin"]["bytes"] for o in tight)
        notes.append(f"{which} tight: at the edge of what fits, by less than the margin of up to "
                     f"{format_bytes(largest_margin, units)} ({tight[0]['margin']['band']:.1%} of the peak, "
                     f"{format_bytes(tight[0]['margin']['context_uncertainty'], units)} for the CUDA context). Such a "
                     "size may not run on the card: with the allocator held to an 8 GB card's memory, one ran out "
                     "(docs/measurements). For room to spare take a smaller size; `sdvram simulate` gives its "
                     "verdict.")
    return Group(answer, heading, table, *[Text(f"- {note}") for note in notes])


def sweep_tables(sweep: dict[str, Any], units: Units) -> Group:
    """``sdvram sweep``: for each card, one row per size: the seed formula, the simulated peaks, the stage of the
    peak, whether it fits."""
    aw, ah = sweep["aspect"]
    switches = switch_label(sweep["switches"])
    family = find_family(sweep.get("pipeline", DEFAULT))
    formula = family.seed_formula
    parts: list[Any] = [Text(f"Simulated {family.title}" + (f" (VAE {sweep['vae']})" if sweep.get("vae") else "")
                             + f", aspect {aw}:{ah}, {sweep['dtype']}, batch {sweep['batch']}, "
                             f"guidance {sweep['guidance']:g}"
                             + (f", safety checker {'on' if sweep['safety_checker'] else 'off'}"
                                if family.has_safety_checker else "")
                             + f", switches: {switches}", style="italic")]
    for key in sweep["gpus"]:
        rows = [r for r in sweep["rows"] if r["gpu"] == key]
        if not rows:
            continue
        capacity = rows[0]["capacity"]
        title = rows[0]["gpu_name"] + (f", {format_bytes(capacity, units)} usable" if capacity else "")
        table = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", caption=f"figures in {unit_label(units)}")
        table.add_column("W x H", justify="right", no_wrap=True)
        table.add_column("MP", justify="right")
        if formula:
            table.add_column("seed formula", justify="right")
        table.add_column("peak allocated", justify="right")
        table.add_column("peak reserved", justify="right")
        table.add_column("peak in")
        table.add_column("verdict", justify="center")
        for row in rows:
            fits = row.get("verdict") or ("" if row["fits"] is None else (FITS if row["fits"] else DOES_NOT_FIT))
            stage = SHORT_STAGE.get(row["peak_stage"], label(row["peak_stage"]))
            cells = [f"{row['width']} x {row['height']}", f"{row['megapixels']:.2f}"]
            cells += [format_number(row["formula_total"], units)] if formula else []
            table.add_row(*cells, format_number(row["peak_allocated"], units), _maybe(row["peak_reserved"], units),
                          stage, fits, style="red" if row["fits"] is False else None)
        parts.append(table)
    return Group(*parts)


def short_module(name: str, width: int = MODULE_WIDTH) -> str:
    """A module path cut in the middle to ``width`` characters, keeping its component and its tail
    ("vae.decoder.up_blocks.2.upsamplers.0.conv" -> "vae…up_blocks.2.upsamplers.0.conv")."""
    if len(name) <= width:
        return name
    head, _, rest = name.partition(".")
    parts = rest.split(".")
    tail: list[str] = []
    while parts and len(head) + 1 + len(".".join([parts[-1], *tail])) <= width:
        tail.insert(0, parts.pop())
    text = f"{head}…{'.'.join(tail)}" if tail else name[: width - 1] + "…"
    return text if len(text) <= width else text[: width - 1] + "…"


def explain_tables(record: Record, units: Units, groups: int = EXPLAIN_GROUPS) -> Group:
    """For the overall peak and each stage's peak: the live allocations grouped by the module that made
    them, largest first, summing to the peak."""
    explained = (record.simulation.explain if record.simulation else None) or {}
    unit = unit_label(units)
    parts: list[Any] = []
    for name in ["overall", *[s.name for s in record.stages]]:
        if name not in explained:
            continue
        data = explained[name]
        title = "the overall peak" if name == "overall" else f"the {label(name)} peak"
        table = Table(title=f"Live at {title}: {format_bytes(data['total'], units)}", title_justify="left",
                      box=box.SIMPLE_HEAD)
        table.add_column("made by", no_wrap=True, max_width=MODULE_WIDTH)
        table.add_column("n", justify="right", no_wrap=True)
        table.add_column(unit, justify="right", no_wrap=True)
        table.add_column("what (largest)", overflow="ellipsis", no_wrap=True, max_width=LARGEST_WIDTH)
        for group in data["groups"][:groups]:
            largest = ", ".join(f"{'x'.join(map(str, t['shape']))} {t['dtype']}" for t in group["tensors"][:1]
                                if t["shape"])
            what = largest if group.get("kind", "tensors") == "tensors" else group["kind"]
            table.add_row(short_module(group["module"]), str(group["count"]), format_number(group["bytes"], units),
                          what)
        rest = data["groups"][groups:]
        if rest:
            table.add_row(f"{len(rest)} other modules", str(sum(g["count"] for g in rest)),
                          format_number(sum(g["bytes"] for g in rest), units), "")
        table.add_section()
        table.add_row("total", str(sum(g["count"] for g in data["groups"])), format_number(data["total"], units), "",
                      style="bold")
        parts.append(table)
    return Group(*parts)


def _maybe(value: int | None, units: Units) -> str:
    return "" if value is None else format_number(value, units)
