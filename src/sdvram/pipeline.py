"""Building and running the real diffusers pipeline of a family (``sdvram.pipelines``).

``build_pipeline`` makes the family's pipeline class either from real weights (``from_pretrained``) or from the
component configs shipped in ``data/`` with random weights and no network; memory depends on shapes and dtypes
only, so both give the same profile. On ``meta`` the same classes are built without any storage, for
``simulate``. Imports torch, diffusers and transformers: reached only by profile/simulate.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from sdvram import standins

# before diffusers and transformers: what they load of Dynamo, sympy and DTensor no run needs (standins.py)
standins.defer()

import transformers

# transformers logs a warning on every diffusers import when torchvision is absent (its image processors
# fall back to Pillow, which is what we use anyway); keep stderr for sdvram's own messages.
transformers.utils.logging.set_verbosity_error()
# diffusers' model packages import every model they hold when one of them is imported (the autoencoders' package
# brings in all its VAEs, the transformers' dozens of transformers): 1.5 s of the 5 s a simulation took to start.
# transformers' models package works out the names of its 400-odd models by reading their folders on disk when it is
# imported (``define_import_structure``), which CLIP's modules, the only ones sdvram needs, bring about: 0.25 to 0.3 s
# (``benchmarks/imports.py``). Each is registered as a package whose own __init__ runs only if an attribute of the
# package itself is asked for; the modules sdvram builds from are imported as they are, one by one. This module is
# the one that imports diffusers and transformers, so that these settings come first (``simulate`` takes the
# diffusers classes it needs from here).
LAZY_PACKAGES = ("diffusers.models.autoencoders", "diffusers.models.transformers", "diffusers.models.unets",
                 "transformers.models")


def _lazy_package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return

    class LazyPackage(types.ModuleType):
        def __getattr__(self, attribute: str) -> Any:
            if attribute.startswith("__") or self.__dict__.get("_initialised"):
                raise AttributeError(attribute)
            self.__dict__["_initialised"] = True
            spec.loader.exec_module(self)  # type: ignore[union-attr]  # the package's __init__, at last
            # (transformers' puts a lazy module of its own in its place, which knows the package's names)
            return getattr(sys.modules.get(name, self), attribute)

    package = LazyPackage(name)
    package.__spec__, package.__file__, package.__package__ = spec, spec.origin, name
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = package


importlib.import_module("diffusers.models")
for _name in LAZY_PACKAGES:
    _lazy_package(_name)

# ruff: noqa: E402 (the imports below come after that setting)
# Each class from its own module: resolving them through diffusers' top-level lazy loader costs ~0.8 s more.
from diffusers.models.attention import BasicTransformerBlock as BasicTransformerBlock  # (these "as" for simulate)
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.modeling_utils import no_init_weights
from diffusers.models.resnet import ResnetBlock2D as ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel as Transformer2DModel
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.pipelines.stable_diffusion.safety_checker import cosine_distance as cosine_distance
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

try:  # transformers 5.2x names the Pillow-based processor it falls back to without torchvision
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # older transformers: the one class, Pillow-based
    from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]

from sdvram.architecture import CLIP_MAX_TOKENS, data_config
from sdvram.choices import Offload
from sdvram.errors import InputError
from sdvram.pipelines import IMAGE, IMAGE_AND_MASK, TEXT, Family
from sdvram.requests import Settings
from sdvram.tokenizer import clip_vocab

diffusers_logging.set_verbosity_error()  # its loading chatter (accelerate hints, hub retries) is not ours to show

MAX_REASON = 160  # characters of a loader's exception quoted in our one-sentence error
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# How each kind of component is made from its config (``Component.builder``)
BUILDERS: dict[str, Callable[[dict[str, Any]], torch.nn.Module]] = {
    "unet": UNet2DConditionModel.from_config,
    "vae": AutoencoderKL.from_config,
    "clip_text": lambda config: CLIPTextModel(CLIPTextConfig(**config)),
    "clip_text_projection": lambda config: CLIPTextModelWithProjection(CLIPTextConfig(**config)),
    "safety_checker": lambda config: StableDiffusionSafetyChecker(CLIPConfig(**config)),
}
# The schedulers the families' configs name, each from its own module (see above)
SCHEDULERS = {"PNDMScheduler": "scheduling_pndm", "DDIMScheduler": "scheduling_ddim",
              "EulerDiscreteScheduler": "scheduling_euler_discrete"}


def build_order(family: Family, safety_checker: bool) -> tuple[str, ...]:
    """The components ``build_pipeline`` makes, in the order it makes them: the order their weights are allocated
    in."""
    return tuple(c.name for c in family.models(safety_checker))


def build_pipeline(
    family: Family,
    *,
    device: str,
    dtype: str,
    weights: str = "random",
    model: str | None = None,
    architecture: str = "full",
    safety_checker: bool = True,
    vae: str | None = None,
) -> Any:
    """The family's pipeline on ``device`` in ``dtype``: ``weights="pretrained"`` loads ``model`` (a hub id or a local
    folder; the family's by default); ``weights="random"`` builds ``architecture`` ("full" or "tiny") from the
    shipped configs. ``vae`` names another VAE of the family (``Family.vaes``), built from its config."""
    torch_dtype = DTYPES[dtype]
    tiny = architecture == "tiny"
    if weights == "pretrained":
        replaced = {} if vae is None else {"vae": _built(family, "vae", device, torch_dtype, tiny, vae)}
        return _load_pretrained(family, model or family.pretrained, device, torch_dtype, safety_checker, replaced)
    modules = {name: _built(family, name, device, torch_dtype, tiny, vae)
               for name in build_order(family, safety_checker)}
    for module in modules.values():
        module.eval().requires_grad_(False)
    scheduler_config = data_config(family.scheduler)
    scheduler_name = scheduler_config["_class_name"]
    scheduler = getattr(importlib.import_module(f"diffusers.schedulers.{SCHEDULERS[scheduler_name]}"), scheduler_name)
    arguments: dict[str, Any] = {**modules, "scheduler": scheduler.from_config(scheduler_config)}
    arguments.update({name: clip_tokenizer() for name in family.tokenizers})
    accepted = inspect.signature(pipeline_class(family).__init__).parameters
    optional = {
        "safety_checker": None,  # not asked for (None is allowed with requires_safety_checker=False)
        # transformers substitutes the Pillow processor for CLIPImageProcessor itself when torchvision is absent
        "feature_extractor": ImageProcessor(**data_config(family.feature_extractor)) if family.feature_extractor
        else None,
        "image_encoder": None, "requires_safety_checker": False,
        "add_watermarker": False,  # SDXL's invisible watermark works on the host's numpy arrays: no GPU memory
    }
    arguments.update({k: v for k, v in optional.items() if k in accepted and k not in arguments})
    return pipeline_class(family)(**arguments)


def pipeline_class(family: Family) -> Any:
    return getattr(importlib.import_module(family.module), family.pipeline_class)


def _built(family: Family, name: str, device: str, dtype: torch.dtype, tiny: bool, vae: str | None) -> Any:
    component = family.component(name)
    assert component is not None, f"{family.name} has no {name}"
    chosen = family.vaes[vae] if name == "vae" and vae is not None else component.config
    config = data_config(component.tiny if tiny else chosen)
    if tiny and name == "vae":  # the tiny VAE takes the chosen VAE's switches, not its widths
        config = {**config, "force_upcast": data_config(chosen).get("force_upcast", False)}
    with _construction(device, dtype):
        return BUILDERS[component.builder](config)


def clip_tokenizer() -> CLIPTokenizer:
    """transformers' CLIPTokenizer over the shipped CLIP vocabulary. Built from the vocab dict and merge
    list: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently makes a 2-token vocabulary in
    transformers 5 (docs/facts.md)."""
    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)  # type: ignore[arg-type]


def run_pipeline(pipe: Any, family: Family, image: Any, prompt: str, settings: Settings, *, height: int, width: int,
                 mask: Any = None, output_type: str = "pil") -> Any:
    """One call of the family's pipeline with ``settings``; returns the pipeline output. ``image`` (and ``mask``) are
    PIL images, or already preprocessed tensors (the simulation's stand-ins); ``height`` x ``width`` is the size the
    pipeline runs at (the image's, rounded down to multiples of 8)."""
    device = pipe._execution_device  # where the models run: with CPU offload, the GPU their hooks move them to
    # On meta no values exist: no generator, so that the noise is made on meta too (a CPU generator would make
    # diffusers draw it on the host: 2 GB at 16384 x 16384, batch 64). Elsewhere a generator on the device.
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(settings.seed)
    pipe.set_progress_bar_config(disable=True)
    arguments: dict[str, Any] = {}
    if family.inputs == IMAGE:
        # One image per generated image where diffusers deprecates duplicating a single init image for
        # num_images_per_prompt > 1 (a FutureWarning); passing the batch encodes each, as it will have to.
        many = family.image_per_output and settings.batch > 1 and not isinstance(image, torch.Tensor)
        arguments.update(image=[image] * settings.batch if many else image, strength=settings.strength)
    elif family.inputs == IMAGE_AND_MASK:
        arguments.update(image=image, mask_image=mask, strength=settings.strength, height=height, width=width)
    else:
        assert family.inputs == TEXT
        arguments.update(height=height, width=width)
    with quiet_library_warnings():
        return pipe(prompt=prompt, guidance_scale=settings.guidance, num_inference_steps=settings.steps,
                    num_images_per_prompt=settings.batch, generator=generator, output_type=output_type, **arguments)


@contextmanager
def quiet_library_warnings() -> Iterator[None]:
    """diffusers' own warnings about its own code are not the user's to act on: its pipelines call their deprecated
    ``upcast_vae`` (FutureWarning), and its Euler scheduler hands numpy 2 a tensor without a copy argument
    (DeprecationWarning). Both are hidden while the pipeline runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="diffusers")
        yield


@contextmanager
def _construction(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: no fp32 copy on the way, no host round trip. On meta
    the ``torch.nn.init`` functions are skipped (diffusers' ``no_init_weights``, what its loader builds models under):
    a meta tensor has no values to write, and SD v1.5's 756 calls took about 0.05 s of a 0.3 s build."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device), no_init_weights() if device == "meta" else nullcontext():
            yield
    finally:
        torch.set_default_dtype(previous)


def _load_pretrained(family: Family, model: str, device: str, dtype: torch.dtype, safety_checker: bool,
                     replaced: dict[str, Any]) -> Any:
    extra: dict[str, Any] = dict(replaced)
    if family.has_safety_checker and not safety_checker:
        extra.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = pipeline_class(family).from_pretrained(model, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        first = text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
        raise InputError(
            "Could not load the model '{name}' ({reason}); give a local folder as the {model}, or set {weights} "
            "to random to build the {title} architecture with random weights (same memory).",
            params=("model", "weights"), name=model, reason=first, title=family.title,
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def apply_switches(pipe: Any, settings: Settings, device: str) -> None:
    """Turn on diffusers' memory-saving switches as a user would: ``pipe.vae.enable_tiling()``,
    ``pipe.vae.enable_slicing()``, ``pipe.enable_attention_slicing(size)``, and model or sequential CPU offload
    (accelerate's hooks; the models are moved to the CPU first, the safety checker stays on ``device``)."""
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    if settings.vae_slicing:
        pipe.vae.enable_slicing()
    if settings.attention_slicing is not None:
        pipe.enable_attention_slicing(settings.attention_slicing)
    if settings.offload is Offload.model:
        pipe.enable_model_cpu_offload(device=device)
    elif settings.offload is Offload.sequential:
        pipe.enable_sequential_cpu_offload(device=device)


def reset_switches(pipe: Any, settings: Settings) -> None:
    """Turn the VAE and attention switches ``settings`` turned on off again (a simulator reuses its pipeline
    between runs). Attention slicing only where it was on: turning it off gives every attention module of the
    UNet a new processor, a walk over all its modules (3 ms, at each of a fit's ~45 runs)."""
    pipe.vae.disable_tiling()
    pipe.vae.disable_slicing()
    if settings.attention_slicing is not None:
        pipe.disable_attention_slicing()
