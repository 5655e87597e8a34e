"""Pictures of the results, with matplotlib (the ``plot`` extra), headless: a sweep's memory against image size
and a run's memory over time. Each function takes a result's JSON document (so ``sdvram plot`` can draw a
saved one) and returns the figure; ``save`` writes it, PNG or SVG by the path's extension.

Bytes come in; the axes are labelled in GiB (1024^3), as nvidia-smi and torch.cuda count.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import IO, Any

from sdvram.errors import InputError
from sdvram.pipelines import DEFAULT, find_family
from sdvram.requests import switch_label
from sdvram.stages import label
from sdvram.units import GIB

FORMATS = {".png": "png", ".svg": "svg"}
SIZE_INCHES = (10.0, 6.0)  # a figure that reads at a glance on a laptop screen and in a README
DPI = 100  # 1000 x 600 pixels for a PNG
PEAK_ITEMS = 3  # what is alive at a timeline's peak: the largest groups named beside it
Y_HEADROOM = 1.15  # the y axis ends this far above the highest curve or drawn capacity line
MIN_STAGE_SHARE = 0.12  # of a timeline's width, for each stage
NARROW_BAND = 0.15  # a stage band narrower than this (of the width) gets its label on two lines
CAPACITY_REACH = 3  # a card's line is drawn when it is within 3x the top of the curves (else it flattens them)


def plot_format(path: str | Path, param: str) -> str:
    """The format a plot path's extension names: png or svg; checked before any run."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{{{param}}} must end in .png or .svg; got '{{suffix}}'.", params=(param,),
                         suffix=suffix or "no extension")
    return FORMATS[suffix]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    # text from records (a card's name, a kind) is drawn as written: a "$" starts no mathtext
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def measured_points() -> list[dict[str, Any]]:
    """The whole-run peaks measured on real GPUs (``data/measured.json``, made by tools/measured_points.py
    from docs/measurements)."""
    text = (resources.files("sdvram") / "data" / "measured.json").read_text(encoding="utf-8")
    points: list[dict[str, Any]] = json.loads(text)["points"]
    return points


def matching_points(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The measured points taken with the sweep's settings (dtype, batch, guidance above 1 or not, safety
    checker, switches) and its aspect ratio."""
    aw, ah = sweep["aspect"]
    return [p for p in measured_points()
            if p.get("pipeline", DEFAULT) == sweep.get("pipeline", DEFAULT)
            and p["dtype"] == sweep["dtype"] and p["batch"] == sweep["batch"]
            and (p["guidance"] > 1) == (sweep["guidance"] > 1) and p["safety_checker"] == sweep["safety_checker"]
            and sorted(p["switches"]) == sorted(sweep["switches"]) and p["width"] * ah == p["height"] * aw]


def settings_line(doc: dict[str, Any]) -> str:
    switches = switch_label(doc["switches"]) if doc["switches"] else "no switches"
    return (f"{doc['dtype']}, batch {doc['batch']}, guidance {doc['guidance']:g}, safety checker "
            f"{'on' if doc['safety_checker'] else 'off'}, {switches}")


def sweep_figure(sweep: dict[str, Any]) -> Any:
    """Peak allocated (GiB) against megapixels: a line per stage and a bold one for the whole run on the first
    card, the seed formula's total dashed, each card's usable memory as a horizontal line, and the points
    measured on real GPUs with the same settings."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    if not sweep["rows"] or not sweep["gpus"]:
        raise InputError("{file} holds a sweep with no rows: there is nothing to draw.", params=("file",))
    first = sweep["gpus"][0]
    rows = [r for r in sweep["rows"] if r["gpu"] == first]
    x = [r["megapixels"] for r in rows]
    stages = [name for name in rows[0]["stages"]] if rows else []
    # the whole run under the stages (a stage's line lies on it where that stage holds the peak), and its peak
    # reserved, which the verdict is decided on, beside it
    axes.plot(x, [r["peak_allocated"] / GIB for r in rows], color="0.55", linewidth=5, zorder=1,
              label=f"whole run, simulated ({rows[0]['gpu_name'] if rows else first})")
    if all(r.get("peak_reserved") is not None for r in rows):
        axes.plot(x, [r["peak_reserved"] / GIB for r in rows], color="black", linestyle="--", linewidth=1.2,
                  zorder=2, label="whole run, peak reserved (what a verdict is decided on)")
    for name in stages:
        axes.plot(x, [r["stages"][name] / GIB for r in rows], marker=".", linewidth=1, zorder=3,
                  label=f"{label(name)} peak")
    totals = [r["formula_total"] for r in rows if r["formula_total"] is not None]
    if totals:  # the seed formula is SD v1.5 img2img's alone
        axes.plot(x, [t / GIB for t in totals], color="grey", linestyle="--", linewidth=1.5,
                  label="seed formula total")
    points = matching_points(sweep)
    highest = max([r["peak_allocated"] for r in rows] + [r.get("peak_reserved") or 0 for r in rows] + totals
                  + [p["peak_allocated"] for p in points] + [0]) / GIB
    top = highest * Y_HEADROOM
    cards = {r["gpu"]: r for r in sweep["rows"] if r["capacity"]}
    above = []
    styles = [":", "-.", (0, (5, 2)), (0, (1, 4))]  # one per card, each named in the legend
    for index, row in enumerate(cards.values()):
        capacity = row["capacity"] / GIB
        if capacity > top * CAPACITY_REACH:  # far above the curves: named in the title, not drawn
            above.append(f"{row['gpu_name']} ({capacity:.1f} GiB usable) is above the plot")
            continue
        top = max(top, capacity * Y_HEADROOM)
        axes.axhline(capacity, color="firebrick", linestyle=styles[index % len(styles)], linewidth=1.2,
                     label=f"{row['gpu_name']}: {capacity:.1f} GiB usable")
    if points:
        axes.scatter([p["width"] * p["height"] / 1e6 for p in points], [p["peak_allocated"] / GIB for p in points],
                     marker="x", s=70, color="tab:red", zorder=5, label="measured (" + ", ".join(
                         sorted({p["gpu_name"] for p in points})) + ")")
    aw, ah = sweep["aspect"]
    title = find_family(sweep.get("pipeline", DEFAULT)).title
    axes.set_title(f"{title}, peak GPU memory against image size (aspect {aw}:{ah})\n"
                   f"{settings_line(sweep)}" + "".join(f"\n{line}" for line in above), fontsize=11)
    axes.set_ylim(0, top)
    axes.set_xlabel("image size (megapixels)")
    axes.set_ylabel("peak memory (GiB)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure


def stage_axis(stages: list[dict[str, Any]], end: int) -> Any:
    """A piecewise-linear map from timeline steps to the plot's x (0 to 1) that gives each stage at least
    ``MIN_STAGE_SHARE`` of the width: the UNet loop takes 95% of a run's ops, and the VAE stages, where the peak
    usually is, would be slivers. Within a stage, x keeps the order and spacing of its steps."""
    edges = [0]
    for band in stages:
        if band["start"] > edges[-1]:
            edges.append(band["start"])
        edges.append(max(band["end"], edges[-1] + 1))
    if end > edges[-1]:
        edges.append(end)
    spans = [b - a for a, b in zip(edges, edges[1:], strict=False)]
    total = sum(spans) or 1
    stage_spans = {(band["start"], band["end"]) for band in stages}
    shares = [max(span / total, MIN_STAGE_SHARE if (a, b) in stage_spans else 0.0)
              for a, b, span in zip(edges, edges[1:], spans, strict=False)]
    scale = sum(shares) or 1
    positions = [0.0]
    for share in shares:
        positions.append(positions[-1] + share / scale)

    def to_x(step: float) -> float:
        for i in range(len(spans)):
            if step <= edges[i + 1] or i == len(spans) - 1:
                fraction = (step - edges[i]) / spans[i] if spans[i] else 0.0
                return positions[i] + min(max(fraction, 0.0), 1.0) * (positions[i + 1] - positions[i])
        return 1.0

    return to_x


def timeline_figure(record: dict[str, Any]) -> Any:
    """Allocated (and reserved) over a run, the stages as labelled bands, the peak annotated with what was
    alive there (the largest groups of ``--explain``) where the record has it."""
    timeline = record["timeline"]
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=SIZE_INCHES, dpi=DPI)
    steps = timeline["x"]
    to_x = stage_axis(timeline["stages"], steps[-1] if steps else 1)
    x = [to_x(step) for step in steps]
    axes.step(x, [v / GIB for v in timeline["allocated"]], where="pre", color="tab:blue", linewidth=1.2,
              label="allocated (the most within each step)")
    if any(v is not None for v in timeline["reserved"]):
        axes.step(x, [(v or 0) / GIB for v in timeline["reserved"]], where="pre", color="tab:orange",
                  linewidth=1, label="reserved")
    for i, band in enumerate(timeline["stages"]):
        start, end = to_x(band["start"]), to_x(band["end"])
        axes.axvspan(start, end, color="0.85" if i % 2 else "0.93", zorder=0)
        text = label(band["name"]) if end - start > NARROW_BAND else label(band["name"]).replace(" ", "\n", 1)
        axes.annotate(text, ((start + end) / 2, 1.0), xycoords=("data", "axes fraction"), ha="center",
                      va="bottom", fontsize=8)
    peak = timeline["peak"]
    text = f"peak {peak['allocated'] / GIB:.2f} GiB ({label(peak['stage'])})"
    if peak.get("alive"):
        text += "\n" + "\n".join(f"{item['module']}: {item['bytes'] / GIB:.2f} GiB" for item in peak["alive"])
    peak_x = to_x(peak["x"])
    axes.annotate(text, (peak_x, peak["allocated"] / GIB), textcoords="offset points",
                  xytext=(-10 if peak_x > 0.5 else 10, -12), ha="right" if peak_x > 0.5 else "left", va="top",
                  fontsize=8, arrowprops={"arrowstyle": "->", "color": "0.3"})
    inputs, settings = record["inputs"], record["settings"]
    device = record["environment"].get("simulated_gpu") or record["environment"].get("gpu_name") or settings["device"]
    title = find_family(record["settings"].get("pipeline", DEFAULT)).title
    axes.set_title(f"{title} memory over the run, {record['kind']}d on {device}\n"
                   f"{inputs['pipeline_width']} x {inputs['pipeline_height']} px, {settings['dtype']}, batch "
                   f"{settings['batch']}, {settings['steps']} steps x strength {settings['strength']:g}",
                   fontsize=11, pad=18)
    fit = (record.get("simulation") or {}).get("fit")
    if fit:  # the card's usable memory, which the verdict is decided against
        axes.axhline(fit["capacity"] / GIB, color="firebrick", linestyle=":", linewidth=1.2,
                     label=f"usable on the card: {fit['capacity'] / GIB:.2f} GiB ({fit['verdict']})")
    axes.set_xlabel(f"the run, stage by stage (short stages drawn wider; within a stage, {timeline['unit']})",
                    fontsize=9)
    axes.set_xticks([])
    axes.set_ylabel("GPU memory (GiB)" if settings["device"] != "cpu" else "memory (GiB)")
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure


def save(figure: Any, handle: IO[bytes], fmt: str) -> None:
    figure.savefig(handle, format=fmt)
    _pyplot().close(figure)


def read_document(path: Path) -> dict[str, Any]:
    """A saved result to draw, read whole: one sentence (InputError naming FILE) for a file that is missing, not a
    file, not JSON (nested too deeply to read included), or not a JSON object."""
    if not path.exists():
        what = "a symbolic link that leads nowhere" if path.is_symlink() else "no such file"
        raise InputError("{file} '{path}': {what}.", params=("file",), path=path, what=what)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise InputError("{file} '{path}' is not a JSON document sdvram can read (nested too deeply).",
                         params=("file",), path=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise InputError("{file} '{path}' is not a JSON document ({why}).", params=("file",), path=path,
                         why=reason) from None
    if not isinstance(document, dict):
        raise InputError("{file} '{path}' is not a JSON object.", params=("file",), path=path)
    return document


def default_plot_path(path: Path) -> Path:
    """Where ``plot FILE`` draws without --out: FILE with .png, when FILE is a regular file and nothing is there
    yet (a default never overwrites, and never writes beside a device such as /dev/stdin)."""
    target = path.with_suffix(".png")
    if path.exists() and not path.is_file():
        raise InputError("{file} '{path}' is not a regular file, so there is no default place for the plot; give "
                         "--out.", params=("file",), path=path)
    if target.exists():
        raise InputError("{file}: the default plot path {target} exists already; give --out to replace it or to "
                         "write elsewhere.", params=("file",), target=target)
    return target


def figure_for(document: dict[str, Any]) -> Any:
    """The figure a saved result calls for: a sweep's JSON, or a record's with a timeline."""
    if isinstance(document.get("rows"), list) and document.get("gpus"):
        return sweep_figure(document)
    if isinstance(document.get("timeline"), dict):
        return timeline_figure(document)
    raise InputError("{file} holds neither a sweep (sdvram sweep --json) nor a record with a timeline (simulate or "
                     "profile with --timeline and --json).", params=("file",))  # the CLI names FILE
