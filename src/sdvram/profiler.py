"""``profile()``: run the real img2img pipeline with every stage instrumented by a ``Meter``.

The stages are cut by wrapping the pipeline's own steps: ``encode_prompt`` (text encoder),
``prepare_latents`` (VAE encoder, with the noise added to its latent), the UNet's forward calls (the
denoising loop, from the first call until the decoder starts), ``vae.decode`` (VAE decoder) and
``run_safety_checker``. At every boundary the meter's peak window is closed and a new one opened, so each
stage's peak is its own and the overall peak covers the gaps between stages too.
"""

from __future__ import annotations

import importlib.metadata
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdvram.architecture import DEFAULT_MODEL
from sdvram.errors import InputError, NoCudaError
from sdvram.estimate import Estimate, estimate
from sdvram.images import load_rgb
from sdvram.inputs import parse_batch
from sdvram.meters import CudaMeter, LiveTensorMeter, Meter, Snapshot
from sdvram.pipeline import RunSettings, build_pipeline, expected_unet_calls, run_pipeline
from sdvram.record import STAGE_LABELS, Record, StageRecord
from sdvram.report import estimate_document
from sdvram.units import format_bytes

DEFAULT_PROMPT = "a detailed photograph of a landscape"  # for a --h/--w run with no image and no --prompt
MAX_STEPS = 1000  # PNDM's num_train_timesteps: the scheduler cannot take more inference steps
MAX_GUIDANCE = 100.0  # a guard against typos; SD v1.5 is used at 1 to 15
FORMULA_STAGES = {"load": "base", "vae_encode": "vae_encode", "unet": "unet", "vae_decode": "vae_decode"}

Progress = Callable[[int, int], None]  # (UNet calls done, UNet calls expected)


@dataclass(frozen=True)
class ProfileRequest:
    """Everything a profile run needs, validated by ``resolve_inputs``."""

    image: Path | None = None
    height: int | str | None = None  # as typed by the user; estimate() validates them
    width: int | str | None = None
    prompt: str | None = None
    device: str = "cuda"
    dtype: str | None = None  # None: float16 on CUDA, float32 elsewhere
    weights: str = "pretrained"
    model: str = DEFAULT_MODEL
    architecture: str = "sd15"
    settings: RunSettings = RunSettings()
    save_image: Path | None = None

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("float16" if self.device.startswith("cuda") else "float32")


class StageRecorder:
    """Cuts a run into stages on one meter. ``begin`` closes the stage before; ``checkpoint`` closes the
    meter's peak window and folds it into the current stage and the overall peak."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter
        self.stages: list[StageRecord] = []
        self.current: StageRecord | None = None
        self.peak_allocated = 0
        self.peak_reserved: int | None = None
        self._started = 0.0
        self.unet_call_peaks: list[int] = []
        self.snapshots: dict[str, Snapshot] = {}  # stage name (or "overall") -> live storages at its peak

    def begin(self, name: str) -> None:
        self.end()
        self.checkpoint()
        self.current = StageRecord(name=name, allocated_start=self.meter.allocated())
        self.current.peak_allocated = self.current.allocated_start
        self._started = time.perf_counter()

    def checkpoint(self) -> int:
        peak = self.meter.take_peak()
        if peak.snapshot is not None and (peak.allocated > self.peak_allocated or "overall" not in self.snapshots):
            self.snapshots["overall"] = peak.snapshot
        self.peak_allocated = max(self.peak_allocated, peak.allocated)
        if peak.reserved is not None:
            self.peak_reserved = max(self.peak_reserved or 0, peak.reserved)
        if self.current is not None:
            name = self.current.name
            if peak.snapshot is not None and (peak.allocated > self.current.peak_allocated
                                              or name not in self.snapshots):
                self.snapshots[name] = peak.snapshot
            self.current.peak_allocated = max(self.current.peak_allocated, peak.allocated)
            if peak.reserved is not None:
                self.current.peak_reserved = max(self.current.peak_reserved or 0, peak.reserved)
        return peak.allocated

    def end(self, completed: bool = True) -> None:
        if self.current is None:
            return
        self.checkpoint()
        stage, self.current = self.current, None
        stage.allocated_end = self.meter.allocated()
        stage.wall_s = time.perf_counter() - self._started
        stage.completed = completed
        if stage.name == "unet":
            stage.unet_calls = len(self.unet_call_peaks)
            if self.unet_call_peaks:
                stage.peak_call = 1 + self.unet_call_peaks.index(max(self.unet_call_peaks))
        self.stages.append(stage)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.begin(name)
        yield
        self.end()


def resolve_inputs(request: ProfileRequest) -> tuple[Estimate, Image.Image]:
    """The seed formula for the request (which also checks sizes, tokens and batch) and the input image.
    The prompt is ``--prompt``, else the image's manifest prompt, else ``DEFAULT_PROMPT``; the formula's
    ``prompt`` and ``tokens_source`` say which."""
    settings = request.settings
    _check_settings(settings)
    if request.architecture != "sd15" and request.weights == "pretrained":
        raise InputError(f"--architecture {request.architecture} has no pretrained weights; add --weights random.")
    common: dict[str, Any] = {"batch": settings.batch, "safety_checker": settings.safety_checker}
    if request.image is not None:
        if request.height is not None or request.width is not None:
            raise InputError("Give either an image or both --h and --w, not both.")
        formula = estimate(image=request.image, prompt=request.prompt, **common)
        if formula.prompt is None:  # an image with no manifest entry and no --prompt
            formula = replace(estimate(image=request.image, prompt=DEFAULT_PROMPT, **common),
                              tokens_source="default prompt")
        return formula, load_rgb(request.image)
    formula = estimate(request.height, request.width, prompt=request.prompt or DEFAULT_PROMPT, **common)
    if request.prompt is None:
        formula = replace(formula, tokens_source="default prompt")
    return formula, synthetic_image(formula.seed.width, formula.seed.height)


def _check_settings(settings: RunSettings) -> None:
    if not 1 <= settings.steps <= MAX_STEPS:
        raise InputError(f"--steps must be a whole number from 1 to {MAX_STEPS}; got {settings.steps}.")
    if not 0 < settings.strength <= 1:
        raise InputError(f"--strength must be above 0 and at most 1; got {settings.strength:g}.")
    if not 0 <= settings.guidance <= MAX_GUIDANCE:
        raise InputError(f"--guidance must be from 0 to {MAX_GUIDANCE:g}; got {settings.guidance:g}.")
    if int(settings.steps * settings.strength) < 1:
        raise InputError(
            f"--steps {settings.steps} at --strength {settings.strength:g} leaves no denoising step "
            "(the pipeline runs int(steps x strength) of them); raise either."
        )
    parse_batch(settings.batch)


def synthetic_image(width: int, height: int) -> Image.Image:
    """A deterministic colour gradient of the given size, for runs given --h/--w instead of an image."""
    gradient = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (gradient, gradient.transpose(Image.Transpose.ROTATE_90).resize((width, height)),
                               Image.new("L", (width, height), 128)))


def check_device(device: str) -> torch.device:
    """The torch device for ``--device``, or NoCudaError when CUDA is asked for and absent."""
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NoCudaError(
                f"No CUDA device is available to torch {torch.__version__}; run with --device cpu to profile "
                "the same pipeline on the CPU, or use 'sdvram estimate' or 'sdvram simulate' to predict it."
            )
        try:
            chosen = torch.device(device)
        except RuntimeError:
            raise InputError(f"--device must be cuda, cuda:N or cpu; got '{device}'.") from None
        count = torch.cuda.device_count()
        if chosen.index is not None and chosen.index >= count:
            raise InputError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                             f"cuda:{count - 1}.")
        return chosen
    if device != "cpu":
        raise InputError(f"--device must be cuda, cuda:N or cpu; got '{device}'.")
    return torch.device("cpu")


def profile(request: ProfileRequest, progress: Progress | None = None, simulate_too: bool = True) -> Record:
    """Run the pipeline once on ``request.device`` and record every stage. An out-of-memory error ends the
    run; the record is still returned, with ``status="out_of_memory"`` and the stage it died in. On a GPU
    (and ``simulate_too``) the record also carries the simulation of the same settings."""
    device = check_device(request.device)
    formula, picture = resolve_inputs(request)
    meter: Meter = CudaMeter(device) if device.type == "cuda" else LiveTensorMeter("cpu")
    record = new_record("profile", request, formula, picture)
    recorder = StageRecorder(meter)
    with meter:
        try:
            with recorder.stage("load"):
                pipe = build_pipeline(
                    device=str(device), dtype=request.resolved_dtype, weights=request.weights,
                    model=request.model, architecture=request.architecture,
                    safety_checker=request.settings.safety_checker,
                )
            if isinstance(meter, LiveTensorMeter):
                track_weights(meter, pipe)
            output = run_instrumented(pipe, picture, formula.prompt or DEFAULT_PROMPT, request.settings,
                                      recorder, progress)
        except torch.OutOfMemoryError:
            failed = recorder.current.name if recorder.current else "between stages"
            recorder.end(completed=False)
            record.status, record.failed_stage = "out_of_memory", failed
        record.environment.update(meter.environment())
        record.device_peak = meter.device_peak()
        record.process_peak = getattr(meter, "process_peak", None)
    finish_record(record, recorder, formula)
    if record.status == "completed" and request.save_image is not None:
        _save_image(output.images[0], request.save_image)
    if device.type == "cuda" and simulate_too:
        record.simulation = _simulate_this_gpu(request, device)
    return record


def _simulate_this_gpu(request: ProfileRequest, device: torch.device) -> Record:
    """The simulation of the same settings for the GPU the profile ran on, so every real run checks the
    simulator (it costs seconds)."""
    from sdvram.gpus import spec_for_device
    from sdvram.simulate import SimulateOptions, simulate

    props = torch.cuda.get_device_properties(device)
    gpu = spec_for_device(props.name, (props.major, props.minor), int(props.total_memory))
    return simulate(replace(request, dtype=request.resolved_dtype), SimulateOptions(gpu))


def run_instrumented(pipe: Any, picture: Image.Image, prompt: str, settings: RunSettings,
                     recorder: StageRecorder, progress: Progress | None = None, output_type: str = "pil") -> Any:
    """One pipeline call with its steps wrapped so that ``recorder`` sees every stage boundary."""
    expected = expected_unet_calls(pipe.scheduler, settings.steps, settings.strength)
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

    def staged(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                recorder.begin(name)
                out = original(*args, **kwargs)
                recorder.end()
                return out
            return call
        return wrap

    wrappers = [(pipe, "encode_prompt", staged("text_encoder")), (pipe, "prepare_latents", staged("vae_encode")),
                (pipe.unet, "forward", unet_forward), (pipe.vae, "decode", staged("vae_decode"))]
    if pipe.safety_checker is not None:
        wrappers.append((pipe, "run_safety_checker", staged("safety_checker")))
    with patched(wrappers):
        output = run_pipeline(pipe, picture, prompt, settings, output_type=output_type)
    recorder.end()
    recorder.checkpoint()
    return output


def new_record(kind: str, request: ProfileRequest, formula: Estimate, picture: Image.Image) -> Record:
    """A record with the inputs, settings and software versions filled in; stages come later."""
    seed = formula.seed
    return Record(
        kind=kind,
        inputs={
            "image": str(request.image) if request.image else None,
            "width": picture.width, "height": picture.height,
            "pipeline_width": picture.width - picture.width % 8,
            "pipeline_height": picture.height - picture.height % 8,
            "prompt": formula.prompt, "prompt_tokens": seed.tokens,
            "prompt_source": formula.tokens_source,
        },
        settings={
            **asdict(request.settings), "device": request.device, "dtype": request.resolved_dtype,
            "weights": request.weights, "model": request.model if request.weights == "pretrained" else None,
            "architecture": request.architecture, "attention": "torch scaled_dot_product_attention (diffusers default)",
        },
        environment={"python": platform.python_version(), **_versions()},
        formula=estimate_document(formula),
    )


def finish_record(record: Record, recorder: StageRecorder, formula: Estimate) -> None:
    """Stages, overall peaks, the formula's figure beside each stage, and the known reasons they differ."""
    stage_formula = formula.seed.stage_bytes()
    for stage in recorder.stages:
        key = FORMULA_STAGES.get(stage.name)
        stage.formula = stage_formula[key] if key else None
    record.stages = recorder.stages
    record.peak_allocated = recorder.peak_allocated
    record.peak_reserved = recorder.peak_reserved
    record.notes = known_differences(record, formula)


def known_differences(record: Record, formula: Estimate) -> list[str]:
    """Why the formula and the run differ, where the reason is known from the pipeline's code."""
    settings, seed = record.settings, formula.seed
    notes = [
        f"The pipeline pads every prompt to 77 tokens, so the formula's {seed.tokens} tokens change nothing in "
        "the real run's shapes."
    ]
    if seed.safety_checker:
        notes.append(
            "The safety checker runs in this pipeline, so the formula's base here includes its weights (the "
            "seed's component table counts them; its formula, and `sdvram estimate` by default, do not)."
        )
    if settings["guidance"] > 1:
        notes.append(
            f"Guidance {settings['guidance']:g} > 1 runs the UNet on a batch of {2 * settings['batch']} "
            f"(unconditional + conditional); the formula counts a batch of {settings['batch']}."
        )
    notes.append(
        "The VAE works at 128 to 512 channels at full image resolution; the formula counts the RGB image "
        "4 times at 2 bytes, so its VAE terms are far below the real activations."
    )
    if settings["dtype"] == "float32":
        notes.append("This run used float32 (4 bytes a value); the formula counts 2 bytes.")
    if settings["architecture"] != "sd15":
        notes.append(
            f"The '{settings['architecture']}' architecture is not SD v1.5: its figures test the instrumentation "
            "and are not comparable with the formula."
        )
    if record.status == "out_of_memory":
        notes.append(f"The run ran out of memory in the {STAGE_LABELS.get(record.failed_stage or '', '?')} "
                     "stage; later stages are missing.")
    return notes


def oom_message(record: Record) -> str:
    """The one sentence for exit code 5."""
    capacity = record.environment.get("gpu_total_memory")
    where = "GPU memory" if record.environment.get("device") == "cuda" else "memory"
    return (
        f"Out of {where} in the {STAGE_LABELS.get(record.failed_stage or '', record.failed_stage)} stage: "
        f"{format_bytes(record.peak_allocated)} allocated "
        f"at the peak so far, the seed formula estimated {format_bytes(record.formula['bytes']['total'])}"
        + (f", the card holds {format_bytes(capacity)}" if capacity else "")
        + "; try a smaller image, --batch 1 or --no-safety-checker."
    )


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in ("sdvram", "torch", "diffusers", "transformers", "nvidia-ml-py"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["torch"] = torch.__version__
    return versions


def track_weights(meter: LiveTensorMeter, pipe: Any) -> dict[str, dict[str, int]]:
    """Count every model's parameters and buffers as resident on ``meter`` (also those made outside its
    view, e.g. loaded from files); return their exact, unrounded bytes and tensor count per component."""
    weights: dict[str, dict[str, int]] = {}
    for component, module in pipe.components.items():
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


def _save_image(image: Image.Image, path: Path) -> None:
    """Save the output image whole or not at all."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        image.save(tmp, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        tmp.replace(path)
    except (OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"Could not save the image to {path} ({exc}).") from None
