"""The record of a profile or simulation: inputs, settings, environment, every stage, the seed formula
beside it. Plain dataclasses in bytes and seconds, shared by ``profile`` and ``simulate`` so the two can be
compared by a program; written as JSON, whole or not at all. Pure Python."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdvram.errors import InputError

STAGE_LABELS = {
    "load": "load (weights)",
    "text_encoder": "text encoder",
    "vae_encode": "VAE encoder",
    "unet": "UNet loop",
    "vae_decode": "VAE decoder",
    "safety_checker": "safety checker",
}
RECORD_VERSION = 1  # bump when a field changes meaning


@dataclass
class StageRecord:
    """One pipeline stage. ``peak_allocated`` is the most held during the stage; ``activation`` is that
    less what was held when it began."""

    name: str
    allocated_start: int
    allocated_end: int = 0
    peak_allocated: int = 0
    peak_reserved: int | None = None
    wall_s: float = 0.0
    unet_calls: int | None = None  # UNet stage only: forward calls, and the 1-based call holding the peak
    peak_call: int | None = None
    formula: int | None = None  # the seed formula's figure for this stage (None: the formula has no term)
    completed: bool = True

    @property
    def activation(self) -> int:
        return self.peak_allocated - self.allocated_start

    @property
    def label(self) -> str:
        return STAGE_LABELS.get(self.name, self.name)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "activation": self.activation}


@dataclass
class Record:
    """A whole run: what was asked, where it ran, each stage, and the overall peaks."""

    kind: str  # "profile" (measured) or "simulate" (predicted)
    inputs: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any]
    formula: dict[str, Any]  # the seed formula's document (sdvram.report.estimate_document)
    stages: list[StageRecord] = field(default_factory=list)
    peak_allocated: int = 0
    peak_reserved: int | None = None
    device_peak: int | None = None  # NVML: the device's memory.used, CUDA context and other processes included
    process_peak: int | None = None  # NVML: this process's usedGpuMemory
    notes: list[str] = field(default_factory=list)
    status: str = "completed"  # or "out_of_memory"
    failed_stage: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    simulation: Record | None = None  # a profile on a GPU carries the simulation of the same settings

    @property
    def peak_stage(self) -> str | None:
        """The stage in which the overall peak fell (the highest stage peak)."""
        if not self.stages:
            return None
        return max(self.stages, key=lambda s: s.peak_allocated).name

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = [s.to_json() for s in self.stages]
        data["simulation"] = self.simulation.to_json() if self.simulation is not None else None
        data["peak_stage"] = self.peak_stage
        data["record_version"] = RECORD_VERSION
        return data


def check_output_path(path: str | Path, what: str) -> Path:
    """``path`` if a file can be written there, else an InputError: checked before a run, so that minutes
    of profiling are not lost to a typo in the output path."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the {what}.")
    if not path.parent.is_dir():
        raise InputError(f"{path.parent} does not exist; create it or give another path for the {what}.")
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"{path.parent} is not writable; give another path for the {what}.")
    return path


def write_json_atomic(path: str | Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` whole or not at all: a temporary file beside it, then a rename."""
    path = check_output_path(path, "JSON record")
    text = json.dumps(document, indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
