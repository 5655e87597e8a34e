"""``sdvram sweep``: the simulation over a range of image sizes, on one or more cards, the pipeline built once.

One row per size and card: the size, its megapixels, each stage's peak allocated, the whole run's peak
allocated and reserved, what nvidia-smi would show, whether it fits the card, and the seed formula's total
beside it. Bytes throughout; ``report.py`` and ``plots.py`` render them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from sdvram.collector import settle
from sdvram.engine import Progress
from sdvram.fit import shape
from sdvram.gpus import GpuSpec
from sdvram.parallel import cores, run_side_by_side
from sdvram.record import Record
from sdvram.requests import RunRequest
from sdvram.simulate import SimulateOptions, simulator_for
from sdvram.stages import STAGES


@dataclass(frozen=True)
class SweepRow:
    """One simulated size on one card."""

    gpu: str
    gpu_name: str
    width: int
    height: int
    stages: dict[str, int]  # stage name -> peak allocated
    peak_allocated: int
    peak_reserved: int | None
    nvidia_smi: int | None
    peak_stage: str | None
    fits: bool | None  # None: the CPU target has no capacity
    verdict: str | None  # fits, tight or does not fit (verdicts.py); None for the CPU target
    capacity: int | None
    formula_total: int | None  # the seed formula's total (None: it does not apply to the pipeline)

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6

    @classmethod
    def of(cls, gpu: GpuSpec, record: Record) -> SweepRow:
        sim = record.simulation
        fit = sim.fit if sim is not None else None
        return cls(gpu.key, gpu.name, record.inputs.pipeline_width, record.inputs.pipeline_height,
                   {s.name: s.peak_allocated for s in record.stages}, record.peak_allocated, record.peak_reserved,
                   record.predicted_nvidia_smi, record.peak_stage, fit.fits if fit is not None else None,
                   fit.verdict if fit is not None else None, gpu.capacity,
                   record.formula["bytes"]["total"] if record.seed_formula_applies else None)

    def to_json(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "gpu_name": self.gpu_name, "width": self.width, "height": self.height,
                "megapixels": round(self.megapixels, 6), "stages": self.stages, "peak_allocated": self.peak_allocated,
                "peak_reserved": self.peak_reserved, "predicted_nvidia_smi": self.nvidia_smi,
                "peak_stage": self.peak_stage, "fits": self.fits, "verdict": self.verdict,
                "capacity": self.capacity,
                "formula_total": self.formula_total}


@dataclass
class SweepResult:
    """Every row, and what was swept: the request's settings (its size is each row's), the aspect, the cards."""

    request: RunRequest
    aspect: tuple[int, int]
    gpus: list[GpuSpec]
    rows: list[SweepRow]

    @property
    def stage_names(self) -> list[str]:
        present = {name for row in self.rows for name in row.stages}
        return [stage.name for stage in STAGES if stage.name in present]

    def to_json(self) -> dict[str, Any]:
        settings = self.request.settings
        return {"pipeline": self.request.pipeline, "vae": self.request.vae, "aspect": list(self.aspect),
                "dtype": self.request.resolved_dtype(True).value,
                "batch": settings.batch, "steps": settings.steps, "strength": settings.strength,
                "guidance": settings.guidance, "safety_checker": settings.safety_checker,
                "switches": list(settings.switches), "gpus": [g.key for g in self.gpus],
                "rows": [row.to_json() for row in self.rows]}

    def to_csv(self) -> str:
        """One line per row: the size, the card, the whole run, then each stage's peak allocated (bytes)."""
        names = self.stage_names
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["gpu", "width", "height", "megapixels", "fits", "verdict", "peak_allocated", "peak_reserved",
                         "predicted_nvidia_smi", "peak_stage", "formula_total", *[f"peak_{n}" for n in names]])
        for row in self.rows:
            writer.writerow([row.gpu, row.width, row.height, f"{row.megapixels:.6f}",
                             "" if row.fits is None else str(row.fits).lower(), row.verdict or "", row.peak_allocated,
                             "" if row.peak_reserved is None else row.peak_reserved,
                             "" if row.nvidia_smi is None else row.nvidia_smi, row.peak_stage or "",
                             "" if row.formula_total is None else row.formula_total,
                             *[row.stages.get(n, "") for n in names]])
        return buffer.getvalue()


def sweep(request: RunRequest, sides: list[int], aspect: tuple[int, int], gpus: list[GpuSpec],
          progress: Progress | None = None, workers: int | None = None) -> SweepResult:
    """Simulate ``request`` at each long side of ``sides`` (the short side in proportion to ``aspect``) on each
    card; the pipeline is built once per dtype and safety checker, here, before the runs are shared out among
    ``workers`` processes (``parallel.py``; default: one per core), each taking every n-th run so that each
    has small and large sizes. A size that does not fit a card is simulated to the end all the same (what it would
    need), and marked. The rows do not depend on the number of workers."""
    runs = [(gpu, side) for gpu in gpus for side in sides]
    for gpu in gpus:
        simulator_for(request, gpu)  # built once, before the workers fork: they share it
    count = max(1, min(workers or cores(), len(runs)))
    done = [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], len(runs))

    shares = [runs[i::count] for i in range(count)]  # run k is the (k // count)-th of share k % count
    found = run_side_by_side([partial(_rows, request, aspect, share) for share in shares], tick, count)
    return SweepResult(request, aspect, gpus, [found[k % count][k // count] for k in range(len(runs))])


def _rows(request: RunRequest, aspect: tuple[int, int], runs: list[tuple[GpuSpec, int]],
          tick: Callable[[], None]) -> list[SweepRow]:
    """The rows of ``runs`` (card, long side), in order, ticking after each."""
    rows = []
    for gpu, side in runs:
        width, height = shape(side, aspect)
        run = replace(request, image=None, width=width, height=height)
        rows.append(SweepRow.of(gpu, simulator_for(request, gpu).run(run, SimulateOptions(gpu))))
        settle()  # what the run left for the sweep's next runs lives as long as they do (collector.py)
        tick()
    return rows
