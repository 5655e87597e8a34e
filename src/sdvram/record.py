"""The record of a profile or a simulation: what was asked, where it ran, every stage, the seed formula
beside it, and (for a simulation) what the model assumed. Plain dataclasses in bytes and seconds, shared by
``profile`` and ``simulate`` so the two can be compared by a program. Pure Python.

``Record.to_json`` is the schema of ``--json``; ``Record.from_json`` reads it back (``sdvram plot``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from sdvram.stages import label
from sdvram.verdicts import DOES_NOT_FIT

RECORD_VERSION = 2  # bump when a field changes meaning (1: the records made before the run engine)


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
    switches: list[str] = field(default_factory=list)  # the memory-saving switches that acted in this stage

    @property
    def activation(self) -> int:
        return self.peak_allocated - self.allocated_start

    @property
    def label(self) -> str:
        return label(self.name)

    @property
    def observed(self) -> int:
        """The figure compared with the formula: the resident weights after loading, else the activation."""
        return self.allocated_end if self.name == "load" else self.activation

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label, "activation": self.activation}


@dataclass(frozen=True)
class RunInputs:
    """The image and prompt a run used."""

    image: str | None
    width: int  # as given (the image's oriented size, or --w)
    height: int
    pipeline_width: int  # what the pipeline runs: each side rounded down to a multiple of 8
    pipeline_height: int
    prompt: str
    prompt_tokens: int
    prompt_source: str  # "prompt", "manifest" or "default prompt"
    mask: str | None = None  # an inpainting run's mask image (None: a full mask, or no mask at all)


@dataclass(frozen=True)
class RunSettings:
    """How the pipeline was built and called."""

    steps: int
    strength: float
    guidance: float
    batch: int
    seed: int
    safety_checker: bool
    dtype: str
    architecture: str
    device: str  # "cuda", "cuda:N", "cpu", or "meta" for a simulation
    weights: str  # "pretrained" or "random"
    model: str | None  # the model loaded (pretrained weights only)
    attention: str  # "auto" (PyTorch's choice) or the one SDPA kernel allowed
    vae_tiling: bool = False
    vae_slicing: bool = False
    attention_slicing: str | int | None = None
    offload: str = "none"
    pipeline: str = "sd15-img2img"  # the family (sdvram.pipelines); records before the families were this one
    vae: str | None = None  # another VAE of the family (``--vae``), None for its own


@dataclass(frozen=True)
class Fit:
    """Does the run fit the card: the allocator model run with the card's usable memory, and the verdict in three
    words (``verdicts.py``) with the figure it was decided on and the margin."""

    verdict: str  # "fits", "tight" or "does not fit"
    capacity: int  # bytes the caching allocator may take: the card's memory less the context and what others hold
    card_memory: int
    context: int
    failed_stage: str | None = None  # where the allocation that did not fit was made
    failed_request: int | None = None  # its bytes
    failed_what: str | None = None  # the tensor or workspace it was for
    decided_on: int = 0  # the peak reserved when it fits; what the allocator had to hold when the request failed
    margin: dict[str, Any] | None = None  # ``Margin.to_json``: bytes, band, its source, context uncertainty
    held_by_others: int = 0  # bytes other processes hold on the card (--reserve)
    allocated_at_failure: int | None = None  # what live blocks held when the request failed
    fragmented: bool | None = None  # the request failed though allocated + request fit the card
    expandable: str | None = None  # the verdict estimated for PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

    @property
    def fits(self) -> bool:
        return self.verdict != DOES_NOT_FIT


@dataclass
class Simulation:
    """What a simulation adds to a record: the target, what its models assumed, and what it saw."""

    gpu: str  # the GPU table's key ("measured" for the card a profile ran on)
    gpu_name: str
    compute_capability: str | None
    gpu_memory: int | None
    weights: dict[str, dict[str, int]]  # per component: exact parameter + buffer bytes, tensor count
    unet_calls_replayed: int
    attention_calls: list[dict[str, Any]]
    peak_requested: int = 0  # the largest sum of live requests (torch's requested_bytes)
    context: int | None = None  # the CUDA context the predicted nvidia-smi figure adds
    context_source: str | None = None
    workspaces: dict[str, int] = field(default_factory=dict)  # largest of each kind, bytes
    assumptions: list[str] = field(default_factory=list)  # what the models took from elsewhere
    fit: Fit | None = None
    explain: dict[str, Any] | None = None
    advice: list[dict[str, Any]] | None = None  # when it does not fit: each combination of switches, cheapest first


@dataclass
class Record:
    """A whole run: what was asked, where it ran, each stage, and the overall peaks."""

    kind: str  # "profile" (measured) or "simulate" (predicted)
    inputs: RunInputs
    settings: RunSettings
    environment: dict[str, Any]
    formula: dict[str, Any]  # the seed formula's document (``Estimate.to_json()``)
    stages: list[StageRecord] = field(default_factory=list)
    peak_allocated: int = 0
    peak_reserved: int | None = None
    device_peak: int | None = None  # NVML: the device's memory.used, CUDA context and other processes included
    process_peak: int | None = None  # NVML: this process's usedGpuMemory
    notes: list[str] = field(default_factory=list)
    status: str = "completed"  # or "out_of_memory"
    failed_stage: str | None = None
    simulation: Simulation | None = None  # kind "simulate": what the simulation modelled
    compared: Record | None = None  # a profile on a GPU: the simulation of the same settings
    timeline: dict[str, Any] | None = None  # memory over the run, when asked for (``engine.build_timeline``)

    @property
    def seed_formula_applies(self) -> bool:
        """Is the seed formula this run's pipeline's specification (SD v1.5 img2img)?"""
        from sdvram.pipelines import find_family

        return find_family(self.settings.pipeline).seed_formula

    @property
    def peak_stage(self) -> str | None:
        """The stage in which the overall peak fell (the highest stage peak)."""
        if not self.stages:
            return None
        return max(self.stages, key=lambda s: s.peak_allocated).name

    @property
    def predicted_nvidia_smi(self) -> int | None:
        """A simulation's predicted nvidia-smi figure: peak reserved + the CUDA context."""
        sim = self.simulation
        if sim is None or sim.context is None or self.peak_reserved is None:
            return None
        return self.peak_reserved + sim.context

    def stage(self, name: str) -> StageRecord | None:
        return next((s for s in self.stages if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"record_version": RECORD_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "stages":
                value = [s.to_json() for s in value]
            elif f.name == "compared":
                value = value.to_json() if value is not None else None
            elif value is not None and hasattr(value, "__dataclass_fields__"):
                value = asdict(value)
            data[f.name] = value
        data["peak_stage"] = self.peak_stage
        data["predicted_nvidia_smi"] = self.predicted_nvidia_smi
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        """The record ``to_json`` wrote (this record version); KeyError/TypeError/ValueError otherwise."""
        if data.get("record_version") != RECORD_VERSION:
            raise ValueError(f"record_version {data.get('record_version')!r}, not {RECORD_VERSION}")
        stage_fields = {f.name for f in fields(StageRecord)}
        sim = data.get("simulation")
        if sim is not None:
            fit = sim.get("fit")
            sim = Simulation(**{**sim, "fit": Fit(**fit) if fit else None})
        return cls(
            kind=data["kind"],
            inputs=RunInputs(**data["inputs"]),
            settings=RunSettings(**data["settings"]),
            environment=dict(data["environment"]),
            formula=dict(data["formula"]),
            stages=[StageRecord(**{k: v for k, v in s.items() if k in stage_fields}) for s in data["stages"]],
            peak_allocated=data["peak_allocated"],
            peak_reserved=data["peak_reserved"],
            device_peak=data["device_peak"],
            process_peak=data["process_peak"],
            notes=list(data["notes"]),
            status=data["status"],
            failed_stage=data["failed_stage"],
            simulation=sim,
            compared=cls.from_json(data["compared"]) if data.get("compared") else None,
            timeline=data.get("timeline"),
        )
