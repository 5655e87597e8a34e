"""What a pipeline family is, as data: the diffusers pipeline class, its components and the configs they are built
from, the inputs it takes, where its stages begin and end, and its defaults as diffusers has them. Pure Python:
the registry is read by every command, ``sdvram estimate`` included, which never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The kinds of input a pipeline takes beside the prompt
TEXT, IMAGE, IMAGE_AND_MASK = "text", "image", "image and mask"


@dataclass(frozen=True)
class Component:
    """One model of a pipeline, built from a shipped config with random weights."""

    name: str  # the pipeline's attribute and constructor argument: "unet", "text_encoder_2"
    builder: str  # the class it is built as (``sdvram.pipeline.BUILDERS``): "unet", "vae", "clip_text", ...
    config: str  # data/<folder>/<file>.json of the published config: "sd15/unet"
    tiny: str  # the same for the tiny architecture (a miniature for running on a CPU in seconds)


@dataclass(frozen=True)
class StageHook:
    """A stage boundary: wrapping ``target.method`` (``target`` "pipe" or a component's name) begins ``stage``
    before the call (unless it is already running) and, with ``ends``, closes it after the call."""

    target: str
    method: str
    stage: str
    ends: bool = True


@dataclass(frozen=True)
class Defaults:
    """The call's defaults, as diffusers' ``__call__`` has them (sd15-img2img keeps the seed's reference run)."""

    steps: int = 50
    strength: float = 1.0  # img2img and inpaint only: the share of the schedule run (1.0: all, from noise)
    guidance: float = 7.5
    size: int = 512  # sides without an image: the UNet's sample_size x the VAE's scale factor


@dataclass(frozen=True)
class Family:
    """A pipeline sdvram can build, profile and simulate."""

    name: str  # what --pipeline takes: "sdxl-txt2img"
    title: str  # what outputs print: "SDXL base 1.0 text-to-image"
    module: str  # the diffusers module of the pipeline class
    pipeline_class: str
    components: tuple[Component, ...]  # in the order they are built (the order their weights are allocated in)
    scheduler: str  # data/<folder>/<file>.json of the scheduler config (its class named inside)
    inputs: str  # TEXT, IMAGE or IMAGE_AND_MASK
    stages: tuple[str, ...]  # the stages a run goes through, in order (``sdvram.stages``)
    hooks: tuple[StageHook, ...]  # where they begin and end, besides the UNet calls
    defaults: Defaults
    pretrained: str  # the hub id ``--weights pretrained`` loads by default
    tokenizers: tuple[str, ...] = ("tokenizer",)
    feature_extractor: str | None = None  # data path of the safety checker's image processor, where it has one
    vaes: dict[str, str] = field(default_factory=dict)  # --vae NAME -> data path of that VAE's config
    # One input image per generated image: diffusers deprecates duplicating a single init image for
    # num_images_per_prompt > 1 in this pipeline, so a batch passes the image that many times (and encodes each)
    image_per_output: bool = False
    seed_formula: bool = False  # the seed formula is this family's (SD v1.5 img2img) specification
    # the pipeline casts a float16 VAE whose config has force_upcast to float32 around its encode and decode (SDXL's;
    # SD v1.5's and 2.1's pipelines never read force_upcast)
    upcasts_vae: bool = False
    checked: str = "not measured on a GPU yet"  # what real hardware has confirmed of it (docs, --verbose)

    @property
    def has_safety_checker(self) -> bool:
        return any(c.name == "safety_checker" for c in self.components)

    @property
    def takes_image(self) -> bool:
        return self.inputs != TEXT

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def models(self, safety_checker: bool) -> tuple[Component, ...]:
        """The components built for a run: the safety checker only when asked for."""
        return tuple(c for c in self.components if c.name != "safety_checker" or safety_checker)
