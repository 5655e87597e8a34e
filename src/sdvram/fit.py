"""Make it fit: the largest image a card holds with each useful combination of diffusers' memory-saving
switches (``fit``), and, for a run that does not fit, which switches would make it fit (``advise``).

Each answer is a simulation (``simulate.py``: the allocator model with the card's capacity), so it is as good as
the simulator. A search builds the pipeline once and stops each run at its first request that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sdvram.choices import Offload
from sdvram.collector import settle
from sdvram.engine import Progress
from sdvram.gpus import GpuSpec
from sdvram.inputs import MAX_SIDE
from sdvram.parallel import cores, run_side_by_side
from sdvram.record import Record
from sdvram.requests import RunRequest, Settings, switch_label
from sdvram.simulate import SimulateOptions, Simulator, simulator_for
from sdvram.verdicts import FITS, judge, margin_for

UNIT = 8  # sides are searched in multiples of 8 pixels, as the pipeline rounds them
START_UNITS = 128  # a search's first size above the smallest: a 1024-pixel side, which most cards hold
SLOW = "sequential_offload"  # every layer crosses the PCIe bus at every call: many times slower


def combinations(batch: int) -> list[tuple[str, ...]]:
    """The useful combinations of switches, cheapest first. VAE slicing only helps a batch of 2 or more;
    attention slicing raises the peak with PyTorch 2's fused attention (measured on the H200: 7.4 GB against
    6.9 GB at 1024 x 1024), so it is not offered."""
    batched = batch > 1
    return [
        (),
        *([("vae_slicing",)] if batched else []),
        ("vae_tiling",),
        *([("vae_slicing", "vae_tiling")] if batched else []),
        ("model_offload",),
        ("vae_tiling", "model_offload"),
        ("sequential_offload",),
        ("vae_tiling", "sequential_offload"),
    ]


def with_switches(settings: Settings, switches: tuple[str, ...]) -> Settings:
    """``settings`` with exactly ``switches`` on."""
    offload = (Offload.sequential if "sequential_offload" in switches
               else Offload.model if "model_offload" in switches else Offload.none)
    return replace(settings, vae_slicing="vae_slicing" in switches, vae_tiling="vae_tiling" in switches,
                   attention_slicing="auto" if "attention_slicing" in switches else None, offload=offload)


@dataclass(frozen=True)
class Option:
    """One combination of switches at one size: does it fit, and the predicted peak allocated."""

    switches: tuple[str, ...]
    fits: bool
    peak: int | None  # bytes allocated at the peak (None: the run stopped where it stopped fitting)
    reserved: int | None = None  # the allocator's peak reserved bytes (what the card's capacity limits)
    width: int | None = None
    height: int | None = None

    @property
    def label(self) -> str:
        return switch_label(self.switches)

    @property
    def slow(self) -> bool:
        return SLOW in self.switches

    def to_json(self) -> dict[str, Any]:
        return {"switches": list(self.switches), "label": self.label, "fits": self.fits, "peak_allocated": self.peak,
                "peak_reserved": self.reserved, "width": self.width, "height": self.height, "slow": self.slow}


@dataclass
class FitResult:
    """The largest image per combination of switches for one card, aspect, batch and dtype."""

    gpu: GpuSpec
    aspect: tuple[int, int]
    request: RunRequest
    options: list[Option]
    weights: int  # bytes the weights take on the card when they are all resident
    image: dict[str, Any] | None = None  # fit IMAGE: the image's own size with no switches, and its verdict

    def to_json(self) -> dict[str, Any]:
        settings = self.request.settings
        return {"gpu": self.gpu.key, "gpu_name": self.gpu.name, "capacity": self.gpu.capacity,
                "card_memory": self.gpu.memory, "aspect": list(self.aspect), "batch": settings.batch,
                "dtype": self.request.resolved_dtype(True).value, "safety_checker": settings.safety_checker,
                "pipeline": self.request.pipeline, "weights": self.weights, "image": self.image,
                "options": [o.to_json() | self._verdict(o) for o in self.options]}

    def _verdict(self, option: Option) -> dict[str, Any]:
        """The verdict ``simulate`` gives the option's size (``verdicts.judge`` on its peak reserved, which the
        search already has): at the edge of what fits it is mostly "tight", within the margin."""
        if not option.fits or option.reserved is None or self.gpu.capacity is None:
            return {"verdict": None, "margin": None}
        margin = margin_for(self.gpu)
        return {"verdict": judge(True, option.reserved, self.gpu.capacity, margin),
                "margin": margin.to_json(option.reserved)}


def image_verdict(request: RunRequest, gpu: GpuSpec) -> dict[str, Any]:
    """The verdict for ``request`` (an image at its own size) with no switches, as ``simulate`` gives it: the
    first line of ``fit IMAGE`` uses the same words for the same run."""
    record = simulator_for(request, gpu).run(request, SimulateOptions(gpu))
    fit = record.simulation.fit if record.simulation is not None else None
    assert fit is not None
    return {"width": record.inputs.pipeline_width, "height": record.inputs.pipeline_height, "verdict": fit.verdict,
            "decided_on": fit.decided_on, "capacity": fit.capacity}


def shape(long_side: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """(width, height) with the long side ``long_side`` pixels and the short side in proportion, rounded down to
    a multiple of 8 (at least 8)."""
    w, h = aspect
    short = max(UNIT, int(long_side * min(w, h) / max(w, h)) // UNIT * UNIT)
    return (long_side, short) if w >= h else (short, long_side)


def size_for(units: int, aspect: tuple[int, int]) -> tuple[int, int]:
    """``shape`` for a long side of ``units`` x 8 pixels."""
    return shape(units * UNIT, aspect)


def _try(simulator: Simulator, request: RunRequest, gpu: GpuSpec, switches: tuple[str, ...], width: int | None = None,
         height: int | None = None) -> Option:
    """``request`` with exactly ``switches`` on (at ``width`` x ``height`` when given), simulated until it fits
    or stops fitting."""
    run = replace(request, settings=with_switches(request.settings, switches))
    if width is not None:
        run = replace(run, image=None, width=width, height=height)
    record = simulator.run(run, SimulateOptions(gpu, stop_at_failure=True))
    settle()  # what the run left for the search's next runs lives as long as they do (collector.py)
    fit = record.simulation.fit if record.simulation else None
    fits = fit is not None and fit.fits
    return Option(switches, fits, record.peak_allocated if fits else None,
                  record.peak_reserved if fits else None, width, height)


def untiled(simulator: Simulator, request: RunRequest, switches: tuple[str, ...], width: int,
            height: int) -> tuple[str, ...]:
    """``switches`` less VAE tiling where the image is no larger than one tile, so that tiling changes nothing:
    diffusers' ``AutoencoderKL`` (``enable_tiling`` sets ``use_tiling``, and nothing else) tiles an image only where
    a side is larger than ``tile_sample_min_size`` (``_encode``), and latents only where a side is larger than
    ``tile_latent_min_size`` (``_decode``); below both the run takes the same path with tiling on as off, and is the
    same simulation (``tests/test_fit.py`` runs both). Not where the simulator's runs are known to depend on what
    ran before them (``Simulator.depends_on_history``): there the two runs may differ."""
    vae = simulator.pipe.vae
    latent = 2 ** (len(vae.config.block_out_channels) - 1)  # the VAE's downsampling: pixels per latent
    if "vae_tiling" in switches and max(width, height) <= vae.tile_sample_min_size \
            and max(width, height) // latent <= vae.tile_latent_min_size \
            and not simulator.depends_on_history(with_switches(request.settings, switches)):
        return tuple(s for s in switches if s != "vae_tiling")
    return switches


def largest(simulator: Simulator, request: RunRequest, gpu: GpuSpec, aspect: tuple[int, int],
            switches: tuple[str, ...], tick: Callable[[], None], hint: int | None = None,
            tried: dict[tuple[Any, ...], Option] | None = None) -> Option:
    """A size that fits whose next size up (8 pixels more on the long side) does not: the largest, where fitting
    is monotonic in size (near the boundary it may not be: the allocator's fragmentation can let a slightly
    larger image fit). Long sides are multiples of 8 up to 16384.

    The search is a safeguarded secant on the peak against the pixels (the activations grow about linearly in
    pixels): from the smallest size and a first guess (``hint``, a long side in units of 8 pixels, else a
    1024-pixel side), each step narrows the bracket between the largest size that fitted and the smallest that
    did not, and aims inside it (``_next_guess``).

    ``tried``: the options its chain's searches found, by the switches that shape their runs and the size
    (``untiled``): a run found there is not run again (each tiled combination's first, at 8 x 8, is the same run
    as its untiled combination's)."""
    def at(units: int) -> Option:
        width, height = size_for(units, aspect)
        key = (untiled(simulator, request, switches, width, height), width, height)
        if key not in known:
            tick()
            known[key] = _try(simulator, request, gpu, switches, width, height)
        option = seen[units] = replace(known[key], switches=switches)
        return option

    known = {} if tried is None else tried  # (a search alone tries no size twice)
    seen: dict[int, Option] = {}
    top = MAX_SIDE // UNIT
    if not at(1).fits:  # not even the smallest image
        return Option(switches, False, None)
    lo, hi = 1, top + 1  # lo fits; hi does not (top + 1: not known yet)
    guess = max(2, min(hint or START_UNITS, top))
    while True:
        if at(guess).fits:
            lo = guess
        else:
            hi = guess
        if hi - lo <= 1:
            return seen[lo]
        guess = _next_guess(seen, lo, hi, gpu.capacity or 0, aspect)


def _next_guess(seen: dict[int, Option], lo: int, hi: int, capacity: int, aspect: tuple[int, int]) -> int:
    """The next size to try, between ``lo`` (fits) and ``hi`` (does not, or one past the largest size).

    Where the secant through the largest fitting size and a fitting size well below it (at most 70% of its
    pixels) reaches the capacity, scaled by the share of the reserved memory that was allocated at the larger
    (the fragmentation); just above ``lo`` when the line says ``lo`` is the boundary; an eighth of the bracket
    under a miss that the line overshoots (or under the first miss, before there is a line); else the middle."""
    top = MAX_SIDE // UNIT
    under_miss = max(lo + 1, hi - max(1, (hi - lo) // 8)) if hi <= top else top
    below = [u for u, o in seen.items() if o.fits and _pixels(u, aspect) <= 0.7 * _pixels(lo, aspect)]
    upper, base = seen[lo], seen[max(below)] if below else None
    if base is None or upper.peak is None or base.peak is None or not upper.reserved or upper.peak <= base.peak:
        misses = sum(1 for o in seen.values() if not o.fits)
        return under_miss if misses == 1 and hi <= top else (lo + hi) // 2
    a1, a2 = _pixels(max(below), aspect), _pixels(lo, aspect)
    target = capacity * upper.peak / upper.reserved
    guess = _units_for(a2 + (target - upper.peak) * (a2 - a1) / (upper.peak - base.peak), aspect)
    if guess <= lo:
        return lo + 1
    return guess if guess < hi else under_miss


def _pixels(units: int, aspect: tuple[int, int]) -> int:
    width, height = size_for(units, aspect)
    return width * height


def _units_for(pixels: float, aspect: tuple[int, int]) -> int:
    w, h = aspect
    long_side = (pixels * max(w, h) / min(w, h)) ** 0.5
    return max(1, int(long_side // UNIT))


def chains(choices: list[tuple[str, ...]]) -> list[list[tuple[str, ...]]]:
    """The combinations in independent chains, each searched in order, its earlier results the first guesses of
    its later ones: one without offload, one per kind of offload. The chains can run side by side."""
    def kind(switches: tuple[str, ...]) -> str:
        return next((s for s in switches if s.endswith("_offload")), "")

    kinds = list(dict.fromkeys(kind(c) for c in choices))
    return [[c for c in choices if kind(c) == k] for k in kinds]


def search_chain(simulator: Simulator, request: RunRequest, gpu: GpuSpec, aspect: tuple[int, int],
                 chain: list[tuple[str, ...]], tick: Callable[[], None]) -> list[Option]:
    """``largest`` for each combination of ``chain`` in turn. A combination holds at least about what each
    combination it contains holds (less is on the card at once), so their best size is its first guess."""
    options: list[Option] = []
    tried: dict[tuple[Any, ...], Option] = {}
    for switches in chain:
        hints = [max(o.width or 0, o.height or 0) // UNIT for o in options
                 if o.fits and set(o.switches) <= set(switches)]
        options.append(largest(simulator, request, gpu, aspect, switches, tick, max(hints, default=None), tried))
    return options


def fit(request: RunRequest, gpu: GpuSpec, aspect: tuple[int, int], progress: Progress | None = None,
        workers: int | None = None) -> FitResult:
    """The largest image of ``aspect`` that fits ``gpu`` with each useful combination of switches (``request``
    gives the batch, dtype, safety checker and call settings; its size is ignored). ``workers``: how many
    chains are searched at once (``parallel.py``; default: all). The answer does not depend on it."""
    simulator = simulator_for(request, gpu)
    choices = combinations(request.settings.batch)
    groups = chains(choices)
    done = [0]

    def tick() -> None:  # a search does not know how many runs it will take: the total is the count so far
        done[0] += 1
        if progress is not None:
            progress(done[0], done[0])

    jobs = [partial(search_chain, simulator, request, gpu, aspect, chain) for chain in groups]
    found = run_side_by_side(jobs, tick, workers)
    by_switches = {o.switches: o for options in found for o in options}
    options = [by_switches[c] for c in choices]
    weights = sum(w["bytes"] for w in simulator.weights.values())
    result = FitResult(gpu, aspect, request, options, weights)
    return result


def advise(request: RunRequest, gpu: GpuSpec, workers: int | None = None) -> list[Option]:
    """For a request that does not fit ``gpu``: each useful combination of switches at the same size, cheapest
    first, with whether it fits and its predicted peak. The combinations are simulated side by side in ``workers``
    processes (``parallel.py``; default: one per core)."""
    simulator = simulator_for(request, gpu)
    jobs = [partial(_advice, simulator, request, gpu, s) for s in combinations(request.settings.batch)[1:]]
    return list(run_side_by_side(jobs, lambda: None, workers or cores()))


def _advice(simulator: Simulator, request: RunRequest, gpu: GpuSpec, switches: tuple[str, ...],
            tick: Callable[[], None]) -> Option:
    option = _try(simulator, request, gpu, switches)
    tick()
    return option


def simulate_with_advice(request: RunRequest, options: SimulateOptions, progress: Progress | None = None) -> Record:
    """``simulate``; when the run does not fit the card, or is tight on it, the record's ``simulation.advice`` lists
    each useful combination of switches at the same size, cheapest first, and whether it fits."""
    record = simulator_for(request, options.gpu).run(request, options, progress)
    sim = record.simulation
    if sim is not None and sim.fit is not None and sim.fit.verdict != FITS:  # tight too: what makes room
        sim.advice = [o.to_json() for o in advise(request, options.gpu)]
    return record
