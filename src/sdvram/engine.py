"""The run engine that ``profile`` and ``simulate`` share: the stages of a pipeline call cut on a meter,
the instrumentation of the pipeline's own steps, and the record built from what the meter saw.

The stages are cut by wrapping the pipeline's steps where its family says they begin and end
(``Family.hooks``: for SD v1.5 img2img ``encode_prompt``, the text encoder; ``prepare_latents``, the VAE encoder with
the noise added to its latent; ``vae.decode``; ``run_safety_checker``), and the UNet's forward calls (the denoising
loop, from the first call until the next stage begins). At every boundary the meter's peak window is closed and a
new one opened, so each stage's peak is its own and the overall peak covers the gaps between stages too.

Imports torch (through the meters' types only at call time): reached by profile and simulate alone.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sdvram.estimate import Estimate, estimate
from sdvram.pipelines import Family, StageHook
from sdvram.record import Record, RunInputs, RunSettings, StageRecord
from sdvram.requests import SWITCH_STAGES, RunRequest, Settings, check_request
from sdvram.stages import BY_NAME, label

Progress = Callable[[int, int], None]  # (done, expected): UNet calls of a run, runs of a search or sweep
VERSIONED = ("sdvram", "torch", "diffusers", "transformers", "accelerate", "nvidia-ml-py")


class StageRecorder:
    """Cuts a run into stages on one meter. ``begin`` closes the stage before; ``checkpoint`` closes the
    meter's peak window and folds it into the current stage and the overall peak."""

    def __init__(self, meter: Any) -> None:
        self.meter = meter
        self.stages: list[StageRecord] = []
        self.current: StageRecord | None = None
        self.peak_allocated = 0
        self.peak_reserved: int | None = None
        self.peak_requested = 0
        self._started = 0.0
        self._first_step: int | None = 0
        self.unet_call_peaks: list[int] = []
        self.snapshots: dict[str, Any] = {}  # stage name (or "overall") -> what was live at its peak
        self.marks: list[tuple[str, int, int]] = []  # each stage's first and last step of the meter's timeline

    def begin(self, name: str) -> None:
        self.end()
        self.checkpoint()
        self.current = StageRecord(name=name, allocated_start=self.meter.allocated())
        self.current.peak_allocated = self.current.allocated_start
        self._started = time.perf_counter()
        self._first_step = self._steps()

    def checkpoint(self) -> int:
        peak = self.meter.take_peak()
        if peak.snapshot is not None and (peak.allocated > self.peak_allocated or "overall" not in self.snapshots):
            self.snapshots["overall"] = peak.snapshot
        self.peak_allocated = max(self.peak_allocated, peak.allocated)
        if peak.reserved is not None:
            self.peak_reserved = max(self.peak_reserved or 0, peak.reserved)
        if peak.requested is not None:
            self.peak_requested = max(self.peak_requested, peak.requested)
        if self.current is not None:
            name = self.current.name
            if peak.snapshot is not None and (peak.allocated > self.current.peak_allocated
                                              or name not in self.snapshots):
                self.snapshots[name] = peak.snapshot
            self.current.peak_allocated = max(self.current.peak_allocated, peak.allocated)
            if peak.reserved is not None:
                self.current.peak_reserved = max(self.current.peak_reserved or 0, peak.reserved)
        return int(peak.allocated)

    def end(self, completed: bool = True) -> None:
        if self.current is None:
            return
        self.checkpoint()
        stage, self.current = self.current, None
        stage.allocated_end = self.meter.allocated()
        stage.wall_s = time.perf_counter() - self._started
        position = self._steps()
        if position is not None:
            self.marks.append((stage.name, self._first_step or 0, position))
        stage.completed = completed
        if stage.name == "unet":
            stage.unet_calls = len(self.unet_call_peaks)
            if self.unet_call_peaks:
                stage.peak_call = 1 + self.unet_call_peaks.index(max(self.unet_call_peaks))
        self.stages.append(stage)

    def _steps(self) -> int | None:
        """Where the meter's timeline is now (None: it keeps none)."""
        return self.meter.timeline_position()  # type: ignore[no-any-return]

    @property
    def stage_name(self) -> str:
        """The stage running now ("between stages" outside one)."""
        return self.current.name if self.current is not None else "between stages"

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.begin(name)
        yield
        self.end()


def resolve(request: RunRequest, safety_checker: bool | None = None) -> Estimate:
    """Check the request and evaluate the seed formula for it, which also resolves the image's size (from
    its header; without an image or a size, the family's default size) and the prompt (given, the image's manifest
    prompt, or the default prompt). For a family the seed formula does not specify, its figures are kept only for
    these resolved inputs (``Record.seed_formula_applies``)."""
    check_request(request)
    settings = request.settings
    height, width = request.height, request.width
    if request.image is None and height is None:
        height = width = request.family.defaults.size
    if request.mask is not None:
        from sdvram.images import image_info

        image_info(request.mask, request.min_side)  # a mask that is not an image is refused before a run
    return estimate(
        height, width, image=request.image, prompt=request.prompt, batch=settings.batch,
        safety_checker=settings.safety_checker if safety_checker is None else safety_checker,
        min_side=request.min_side,
    )


def expected_unet_calls(scheduler: Any, settings: Settings, family: Family) -> int:
    """How many times the loop calls the UNet: the scheduler's timesteps, after the strength cut where the family
    starts from an image, as ``get_timesteps`` takes them (41 for PNDM, 50 steps, strength 0.8)."""
    from sdvram.pipeline import quiet_library_warnings

    schedule = type(scheduler).from_config(scheduler.config)  # a fresh one: the pipeline's keeps its state
    with quiet_library_warnings():
        schedule.set_timesteps(settings.steps)
    t_start = max(settings.steps - settings.denoising_steps, 0) if family.takes_image else 0
    return len(schedule.timesteps[t_start * schedule.order :])


def run_instrumented(pipe: Any, family: Family, image: Any, prompt: str, settings: Settings,
                     recorder: StageRecorder, progress: Progress | None = None, output_type: str = "pil", *,
                     height: int, width: int, mask: Any = None) -> Any:
    """One pipeline call with its steps wrapped so that ``recorder`` sees every stage boundary."""
    from sdvram.pipeline import run_pipeline

    expected = expected_unet_calls(pipe.scheduler, settings, family)
    recorder.unet_call_peaks = []

    def unet_forward(original: Callable[..., Any]) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            if recorder.current is None or recorder.current.name != "unet":
                recorder.begin("unet")
            recorder.checkpoint()
            out = original(*args, **kwargs)
            recorder.unet_call_peaks.append(recorder.checkpoint())
            if progress is not None:
                progress(len(recorder.unet_call_peaks), expected)
            return out
        return forward

    def staged(hook: StageHook) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                if recorder.current is None or recorder.current.name != hook.stage:
                    recorder.begin(hook.stage)
                out = original(*args, **kwargs)
                if hook.ends:
                    recorder.end()
                return out
            return call
        return wrap

    wrappers: list[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]] = [
        (pipe.unet, "forward", unet_forward)]
    for hook in family.hooks:
        target = pipe if hook.target == "pipe" else getattr(pipe, hook.target, None)
        if target is not None and hasattr(target, hook.method) and \
                (hook.stage != "safety_checker" or getattr(pipe, "safety_checker", None) is not None):
            wrappers.append((target, hook.method, staged(hook)))
    with patched(wrappers):
        output = run_pipeline(pipe, family, image, prompt, settings, height=height, width=width, mask=mask,
                              output_type=output_type)
    recorder.end()
    recorder.checkpoint()
    return output


def new_record(kind: str, request: RunRequest, formula: Estimate, *, device: str, dtype: str,
               weights: str, model: str | None, attention: str) -> Record:
    """A record with the inputs, settings and software versions filled in; stages come later."""
    seed, settings = formula.seed, request.settings
    return Record(
        kind=kind,
        inputs=RunInputs(
            image=formula.image, width=seed.width, height=seed.height,
            pipeline_width=seed.width - seed.width % 8, pipeline_height=seed.height - seed.height % 8,
            prompt=formula.prompt or "", prompt_tokens=seed.tokens, prompt_source=formula.tokens_source,
            mask=str(request.mask) if request.mask is not None else None,
        ),
        settings=RunSettings(
            steps=settings.steps, strength=settings.strength, guidance=settings.guidance, batch=settings.batch,
            seed=settings.seed, safety_checker=settings.safety_checker, dtype=dtype,
            architecture=request.architecture.value, device=device, weights=weights, model=model,
            attention=attention, vae_tiling=settings.vae_tiling, vae_slicing=settings.vae_slicing,
            attention_slicing=settings.attention_slicing, offload=settings.offload.value,
            pipeline=request.pipeline, vae=request.vae,
        ),
        environment={"python": platform.python_version(), **versions()},
        formula=formula.to_json(),
    )


def finish_record(record: Record, recorder: StageRecorder, formula: Estimate, settings: Settings) -> None:
    """Stages, overall peaks, the formula's figure and the switches beside each stage, and the known reasons
    the run and the formula differ."""
    terms = formula.seed.stage_bytes() if record.seed_formula_applies else {}
    for stage in recorder.stages:
        term = BY_NAME[stage.name].formula if stage.name in BY_NAME else None
        stage.formula = terms.get(term) if term else None
        stage.switches = [name for name in settings.switches
                          if SWITCH_STAGES[name] is None or stage.name in (SWITCH_STAGES[name] or ())]
    record.stages = recorder.stages
    record.peak_allocated = recorder.peak_allocated
    record.peak_reserved = recorder.peak_reserved
    record.notes = known_differences(record)


TIMELINE_STAGE_POINTS = 400  # a record's timeline keeps at most this many steps a stage (each the most it covers)
TIMELINE_ALIVE = 3  # what is alive at the peak: the largest module groups named


def build_timeline(series: list[tuple[int, int | None]], marks: list[tuple[str, int, int]],
                   explained: dict[str, Any] | None, unit: str = "aten ops in the order the pipeline ran them"
                   ) -> dict[str, Any]:
    """The meter's steps (one per aten op, the most allocated and reserved during it; on a GPU one per event of
    the allocator's trace), cut to at most ``TIMELINE_STAGE_POINTS`` a stage by keeping the most of each run
    of steps; the stages' spans in steps; the peak, with the largest groups alive there where ``--explain``
    knows them."""
    bounds = sorted({0, len(series), *(b for _, a, e in marks for b in (a, e) if 0 <= b <= len(series))})
    x, allocated, reserved = [], [], []
    for first, last in zip(bounds, bounds[1:], strict=False):  # each stage (and gap) cut on its own
        per = max(1, -(-(last - first) // TIMELINE_STAGE_POINTS))
        for start in range(first, last, per):
            chunk = series[start:min(start + per, last)]
            x.append(start + len(chunk))
            allocated.append(max(a for a, _ in chunk))
            values = [r for _, r in chunk if r is not None]
            reserved.append(max(values) if values else None)
    top = max(range(len(series)), key=lambda i: series[i][0]) if series else 0
    stage = next((name for name, first, last in marks if first <= top < last), "between stages")
    alive = [{"module": g["module"], "bytes": g["bytes"]}
             for g in ((explained or {}).get("overall") or {}).get("groups", [])[:TIMELINE_ALIVE]]
    return {"unit": unit, "x": x, "allocated": allocated,
            "reserved": reserved, "stages": [{"name": n, "start": a, "end": b} for n, a, b in marks],
            "peak": {"x": top + 1, "allocated": series[top][0] if series else 0, "stage": stage, "alive": alive}}


def known_differences(record: Record) -> list[str]:
    """Why the formula and the run differ, where the reason is known from the pipeline's code; first, how the
    pipeline rounded the size."""
    inputs = record.inputs
    rounded = []
    if (inputs.pipeline_width, inputs.pipeline_height) != (inputs.width, inputs.height):
        rounded.append(f"The pipeline rounds {inputs.width} x {inputs.height} px (W x H) down to "
                       f"{inputs.pipeline_width} x {inputs.pipeline_height} (multiples of 8).")
    return rounded + _differences(record)


def _differences(record: Record) -> list[str]:
    settings, inputs = record.settings, record.inputs
    if not record.seed_formula_applies:
        from sdvram.pipelines import find_family

        notes = [f"The seed formula specifies SD v1.5 img2img; it does not apply to "
                 f"{find_family(settings.pipeline).title} ({settings.pipeline})."]
        if record.status == "out_of_memory":
            notes.append(f"The run ran out of memory in the {label(record.failed_stage)} stage; later stages are "
                         "missing.")
        return notes
    notes = [
        f"The pipeline pads every prompt to 77 tokens, so the formula's {inputs.prompt_tokens} tokens change "
        "nothing in the real run's shapes."
    ]
    if settings.safety_checker:
        notes.append(
            "The safety checker runs (as from_pretrained loads it), so the formula's base here includes its "
            "weights; the seed's formula leaves them out."
        )
    if settings.guidance > 1:
        notes.append(
            f"Guidance {settings.guidance:g} > 1 runs the UNet on a batch of {2 * settings.batch} "
            f"(unconditional + conditional); the formula counts a batch of {settings.batch}."
        )
    notes.append(
        "The VAE works at 128 to 512 channels at full image resolution; the formula counts the RGB image "
        "4 times at 2 bytes, so its VAE terms are far below the real activations."
    )
    if settings.dtype == "float32":
        notes.append("This run used float32 (4 bytes a value); the formula counts 2 bytes.")
    if settings.architecture not in ("full", "sd15"):
        notes.append(
            f"The '{settings.architecture}' architecture is not SD v1.5: its figures test the instrumentation "
            "and are not comparable with the formula."
        )
    if record.status == "out_of_memory":
        notes.append(f"The run ran out of memory in the {label(record.failed_stage)} stage; later stages are "
                     "missing.")
    return notes


def versions() -> dict[str, str | None]:
    """The installed versions of sdvram and the libraries whose behaviour the figures depend on."""
    return dict(_versions())


@functools.cache
def _versions() -> dict[str, str | None]:
    """``versions``, looked up once a process (each lookup reads the packages' metadata from disk; a fit search
    makes a record for each of its forty runs)."""
    found: dict[str, str | None] = {}
    for package in VERSIONED:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = None
    import torch

    found["torch"] = torch.__version__
    return found


def track_weights(meter: Any, pipe: Any, order: Sequence[str]) -> dict[str, dict[str, int]]:
    """Count every model's parameters and buffers as resident on ``meter``, component by component in
    ``order`` (the order they were built, which the allocator places them in), tensors in the order the
    module holds them; return their exact, unrounded bytes and tensor count per component."""
    import torch

    weights: dict[str, dict[str, int]] = {}
    for component in order:
        module = getattr(pipe, component, None)
        if isinstance(module, torch.nn.Module):
            tensors = [*module.parameters(), *module.buffers()]
            for tensor in tensors:
                meter.track(tensor, owner=f"{component} weights", resident=True)
            weights[component] = {"bytes": sum(t.numel() * t.element_size() for t in tensors),
                                  "tensors": len(tensors)}
    return weights


@contextmanager
def patched(wrappers: Sequence[tuple[Any, str, Callable[[Callable[..., Any]], Callable[..., Any]]]]) -> Iterator[None]:
    """Replace ``obj.attr`` by ``wrap(obj.attr)`` for each entry (an instance attribute), and put back
    exactly what the instance had afterwards (nothing, when the attribute came from its class)."""
    missing = object()
    saved = [(obj, attr, vars(obj).get(attr, missing)) for obj, attr, _ in wrappers]
    for obj, attr, wrap in wrappers:
        setattr(obj, attr, wrap(getattr(obj, attr)))
    try:
        yield
    finally:
        for obj, attr, previous in reversed(saved):
            if previous is missing:
                delattr(obj, attr)
            else:
                setattr(obj, attr, previous)
