"""What a run is asked to do, as typed values: the CLI builds these at its edge, the library checks them
(``check``) and raises errors that name parameters. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdvram.architecture import MIN_SIDE
from sdvram.choices import Architecture, DType, Kernel, Offload, Weights
from sdvram.errors import InputError
from sdvram.gpus import GpuSpec
from sdvram.inputs import (
    parse_attention_slicing,
    parse_batch,
    parse_guidance,
    parse_seed,
    parse_side,
    parse_steps,
    parse_strength,
)
from sdvram.pipelines import DEFAULT, IMAGE_AND_MASK, Family, find_family

# The switches in the order of what they cost a user: VAE slicing (nothing, batch > 1 only), VAE tiling (time, and
# faint seams), attention slicing (time), model offload (a model moved per stage), sequential offload (every
# layer moved at every call: slow).
SWITCH_ORDER = ("vae_slicing", "vae_tiling", "attention_slicing", "model_offload", "sequential_offload")
# The stages each switch acts in (offload moves the models in and out around every stage).
SWITCH_STAGES = {"vae_slicing": ("vae_encode", "vae_decode"), "vae_tiling": ("vae_encode", "vae_decode"),
                 "attention_slicing": ("unet",), "model_offload": None, "sequential_offload": None}
SWITCH_LABELS = {"vae_slicing": "VAE slicing", "vae_tiling": "VAE tiling", "attention_slicing": "attention slicing",
                 "model_offload": "model CPU offload", "sequential_offload": "sequential CPU offload"}
SWITCH_SHORT = {"vae_slicing": "VAE slicing", "vae_tiling": "VAE tiling", "attention_slicing": "attn. slicing",
                "model_offload": "model offload", "sequential_offload": "seq. offload"}  # for narrow table cells


def switches_on(vae_slicing: bool, vae_tiling: bool, attention_slicing: object, offload: str) -> tuple[str, ...]:
    """The switches that are on, by name, in ``SWITCH_ORDER`` (``offload``: "none", "model" or "sequential")."""
    on = {"vae_slicing": vae_slicing, "vae_tiling": vae_tiling, "attention_slicing": attention_slicing is not None,
          "model_offload": offload == "model", "sequential_offload": offload == "sequential"}
    return tuple(name for name in SWITCH_ORDER if on[name])


def switch_label(switches: tuple[str, ...] | list[str], short: bool = False) -> str:
    """Switches by their labels, joined with " + "; "none" when there are none."""
    names = SWITCH_SHORT if short else SWITCH_LABELS
    return " + ".join(names[s] for s in switches) if switches else "none"


@dataclass(frozen=True)
class Settings:
    """How the pipeline is called. The defaults are the seed's reference run: guidance 5.0, 50 inference
    steps at strength 0.8 (40 denoising steps), one image; the safety checker is left out, as the seed's
    formula leaves it out (``safety_checker=True`` runs it, as ``from_pretrained`` would). Another family's
    defaults come from ``settings_for``."""

    steps: int = 50
    strength: float = 0.8
    guidance: float = 5.0
    batch: int = 1
    seed: int = 0
    safety_checker: bool = False
    # diffusers' memory-saving switches
    vae_tiling: bool = False  # pipe.vae.enable_tiling()
    vae_slicing: bool = False  # pipe.vae.enable_slicing()
    attention_slicing: str | int | None = None  # pipe.enable_attention_slicing(slice_size): "auto", "max", N
    offload: Offload = Offload.none  # pipe.enable_model_cpu_offload() / enable_sequential_cpu_offload()

    @property
    def switches(self) -> tuple[str, ...]:
        """The switches that are on, by name, in the order a user pays for them (``SWITCH_ORDER``)."""
        return switches_on(self.vae_slicing, self.vae_tiling, self.attention_slicing, Offload(self.offload).value)

    @property
    def denoising_steps(self) -> int:
        """The steps the img2img loop runs: ``int(steps x strength)`` (diffusers' ``get_timesteps``)."""
        return min(int(self.steps * self.strength), self.steps)


def settings_for(family: Family, steps: int | None = None, strength: float | None = None,
                 guidance: float | None = None, **rest: Any) -> Settings:
    """Settings with the family's defaults (``Family.defaults``) where a value is not given. A strength given to a
    pipeline that takes no image is refused."""
    if strength is not None and not family.takes_image:
        raise InputError("{strength} applies to pipelines that start from an image; {pipeline} makes its image "
                         "from noise (strength 1).", params=("strength", "pipeline"))
    defaults = family.defaults
    return Settings(steps=defaults.steps if steps is None else steps,
                    strength=defaults.strength if strength is None else strength,
                    guidance=defaults.guidance if guidance is None else guidance, **rest)


@dataclass(frozen=True)
class RunRequest:
    """One pipeline run: the pipeline family, the image (a file, or a size for a generated one; neither: the
    family's default size), the mask of an inpainting run, the prompt, the build."""

    image: Path | None = None
    height: int | None = None
    width: int | None = None
    prompt: str | None = None  # None: the image's manifest prompt, else the default prompt
    dtype: DType | None = None  # None: float16 on a GPU, float32 on the CPU
    architecture: Architecture = Architecture.full
    settings: Settings = field(default_factory=Settings)
    pipeline: str = DEFAULT  # a name of sdvram.pipelines.FAMILIES
    mask: Path | None = None  # inpainting's mask image (None: a full mask of the image's size)
    vae: str | None = None  # another VAE of the family (Family.vaes), e.g. "fp16-fix" for SDXL

    @property
    def family(self) -> Family:
        return find_family(self.pipeline)

    @property
    def min_side(self) -> int:
        return MIN_SIDE[self.architecture.value]

    def resolved_dtype(self, on_gpu: bool) -> DType:
        return self.dtype or (DType.float16 if on_gpu else DType.float32)


@dataclass(frozen=True)
class ProfileOptions:
    """Where and with which weights ``profile`` runs."""

    device: str = "cuda"  # "cuda", "cuda:N" or "cpu"
    weights: Weights = Weights.pretrained
    model: str | None = None  # a hub id or folder for pretrained weights (None: SD v1.5's hub id)
    save_image: Path | None = None
    timeline: bool = False  # keep the memory over the run (Record.timeline)

    def resolved_model(self, family: Family) -> str | None:
        """The weights loaded: ``model``, else the family's hub id; None for random weights."""
        return (self.model or family.pretrained) if self.weights is Weights.pretrained else None


def check_request(request: RunRequest) -> None:
    """Raise InputError (naming the parameter) on any value the run cannot take; files are checked when
    read. Everything here is checked before anything is built."""
    family = request.family
    if request.image is not None and (request.height is not None or request.width is not None):
        raise InputError("Give either an {image} or both {height} and {width}, not both.",
                         params=("image", "height", "width"))
    if request.image is None:
        if (request.height is None) != (request.width is None):
            raise InputError("Give an {image}, or both {height} and {width} (pixels) for a generated one.",
                             params=("image", "height", "width"))
        if request.height is not None and request.width is not None:
            parse_side(request.height, "height", request.min_side)
            parse_side(request.width, "width", request.min_side)
    if request.mask is not None and family.inputs != IMAGE_AND_MASK:
        raise InputError("{mask} is for inpainting; {pipeline} {name} takes no mask.", params=("mask", "pipeline"),
                         name=family.name)
    if request.vae is not None and request.vae not in family.vaes:
        known = ", ".join(family.vaes) or "none"
        raise InputError("{vae} '{got}' is not a VAE of {name} (its other VAEs: {known}).", params=("vae",),
                         got=request.vae, name=family.name, known=known)
    if request.settings.safety_checker and not family.has_safety_checker:
        raise InputError("{pipeline} {name} ships no safety checker; leave out {safety_checker}.",
                         params=("pipeline", "safety_checker"), name=family.name)
    check_settings(request.settings)


def check_settings(settings: Settings) -> None:
    parse_steps(settings.steps)
    parse_strength(settings.strength)
    parse_guidance(settings.guidance)
    parse_batch(settings.batch)
    parse_seed(settings.seed)
    parse_attention_slicing(settings.attention_slicing)
    Offload(settings.offload)
    if settings.denoising_steps < 1:
        raise InputError("{steps} {n} at {strength} {s:g} leaves no denoising step (the pipeline runs "
                         "int(steps x strength) of them); raise either.", params=("steps", "strength"),
                         n=settings.steps, s=settings.strength)


def check_profile_options(options: ProfileOptions, architecture: Architecture) -> None:
    if options.weights is Weights.random and options.model is not None:
        raise InputError("{model} names weights to load, but {weights} is random; drop one of them.",
                         params=("model", "weights"))
    if architecture is not Architecture.full and options.weights is Weights.pretrained:
        raise InputError(f"{{architecture}} {architecture.value} has no pretrained weights; set {{weights}} to "
                         "random.", params=("architecture", "weights"))
    device = options.device
    if device != "cpu" and device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise InputError("{device} must be cuda, cuda:N or cpu; got '{got}'.", params=("device",), got=device)


def check_switches_on_device(settings: Settings, device: str) -> None:
    """CPU offload moves models (or layers) between the CPU and a GPU: on the CPU there is nowhere to offload to
    (accelerate's hooks would copy every weight from "cpu" to "cpu:0" and back, which no one runs)."""
    if settings.offload is not Offload.none and device == "cpu":
        raise InputError("{offload} moves the models between the CPU and a GPU; on the CPU there is nowhere to "
                         "offload to: leave it out, or run on a GPU.", params=("offload",))


def request_from_record(record: dict[str, Any], root: Path | None = None) -> RunRequest:
    """The run a profile or simulation record describes (version 1, the records made before the run engine,
    or version 2): the image (relative paths under ``root``) or size, the prompt, the dtype and the settings."""
    inputs, settings = record["inputs"], record["settings"]
    image = Path(inputs["image"]) if inputs.get("image") else None
    if image is not None and root is not None and not image.is_absolute():
        image = root / image
    mask = Path(inputs["mask"]) if inputs.get("mask") else None
    if mask is not None and root is not None and not mask.is_absolute():
        mask = root / mask
    return RunRequest(
        image=image, height=None if image else inputs["height"], width=None if image else inputs["width"],
        prompt=inputs["prompt"], dtype=DType(settings["dtype"]), architecture=Architecture(settings["architecture"]),
        pipeline=settings.get("pipeline", DEFAULT), mask=mask, vae=settings.get("vae"),
        settings=Settings(steps=settings["steps"], strength=settings["strength"], guidance=settings["guidance"],
                          batch=settings["batch"], seed=settings["seed"], safety_checker=settings["safety_checker"],
                          vae_tiling=settings.get("vae_tiling", False), vae_slicing=settings.get("vae_slicing", False),
                          attention_slicing=settings.get("attention_slicing"),
                          offload=Offload(settings.get("offload", "none"))),
    )


@dataclass(frozen=True)
class SimulateOptions:
    """What ``simulate`` adds to a run request: the GPU, which attention kernels may run, explain (here, not in
    ``simulate``, so that the command line builds it before torch is loaded)."""

    gpu: GpuSpec
    attention: Kernel = Kernel.auto  # auto: PyTorch's choice; else only that kernel, as sdpa_kernel allows
    explain: bool = False
    replay: bool = True  # replay UNet calls with the same shapes from their log (exact; off to check that)
    stop_at_failure: bool = False  # end the run at the first request that does not fit (a search's quick "no")
    # The process ran a matrix multiply before this pipeline was built (a harness running variants one after
    # another, as tools/gpu_variants.py does): the cuBLAS workspaces are held before the weights load.
    warm_process: bool = False
    timeline: bool = False  # keep the memory over the run (Record.timeline)
