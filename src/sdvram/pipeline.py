"""Building and running the real diffusers SD v1.5 img2img pipeline.

``build_pipeline`` makes ``StableDiffusionImg2ImgPipeline`` either from real weights (``from_pretrained``) or
from the component configs shipped in ``data/`` with random weights and no network; memory depends on
shapes and dtypes only, so both give the same profile. On ``meta`` the same classes are built without any
storage, for ``simulate``. Imports torch, diffusers and transformers: reached only by profile/simulate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import transformers

# transformers logs a warning on every diffusers import when torchvision is absent (its image processors
# fall back to Pillow, which is what we use anyway); keep stderr for sdvram's own messages.
transformers.utils.logging.set_verbosity_error()

# ruff: noqa: E402 (the imports below come after that setting)
# Each class from its own module: resolving them through diffusers' top-level lazy loader costs ~0.8 s more.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

try:  # transformers 5.2x names the Pillow-based processor it falls back to without torchvision
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # older transformers: the one class, Pillow-based
    from transformers import CLIPImageProcessor as ImageProcessor  # type: ignore[assignment]

from sdvram.architecture import CLIP_MAX_TOKENS, DEFAULT_MODEL, component_config
from sdvram.choices import Offload
from sdvram.errors import InputError
from sdvram.requests import Settings
from sdvram.tokenizer import clip_vocab

diffusers_logging.set_verbosity_error()  # its loading chatter (accelerate hints, hub retries) is not ours to show

MAX_REASON = 160  # characters of a loader's exception quoted in our one-sentence error
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# The order build_pipeline makes the models in, which is the order their weights are allocated in.
BUILD_ORDER = ("unet", "vae", "text_encoder", "safety_checker")


def build_pipeline(
    *,
    device: str,
    dtype: str,
    weights: str = "random",
    model: str = DEFAULT_MODEL,
    architecture: str = "sd15",
    safety_checker: bool = True,
) -> Any:
    """The img2img pipeline (a ``StableDiffusionImg2ImgPipeline``) on ``device`` in ``dtype``:
    ``weights="pretrained"`` loads ``model`` (a hub id or a local folder); ``weights="random"`` builds
    ``architecture`` from the shipped configs."""
    torch_dtype = DTYPES[dtype]
    if weights == "pretrained":
        return _load_pretrained(model, device, torch_dtype, safety_checker)
    with _construction(device, torch_dtype):
        unet = UNet2DConditionModel.from_config(component_config("unet", architecture))
        vae = AutoencoderKL.from_config(component_config("vae", architecture))
        text_encoder = CLIPTextModel(CLIPTextConfig(**component_config("text_encoder", architecture)))
        checker = (
            StableDiffusionSafetyChecker(CLIPConfig(**component_config("safety_checker", architecture)))
            if safety_checker
            else None
        )
    for module in (unet, vae, text_encoder, checker):
        if module is not None:
            module.eval().requires_grad_(False)
    return StableDiffusionImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=PNDMScheduler.from_config(component_config("scheduler")),
        safety_checker=checker,  # type: ignore[arg-type]  # None is allowed with requires_safety_checker=False
        # transformers substitutes the Pillow processor for CLIPImageProcessor itself when torchvision is absent
        feature_extractor=ImageProcessor(**component_config("feature_extractor")),  # type: ignore[arg-type]
        requires_safety_checker=False,
    )


def clip_tokenizer() -> CLIPTokenizer:
    """transformers' CLIPTokenizer over the shipped CLIP vocabulary. Built from the vocab dict and merge
    list: ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently makes a 2-token vocabulary in
    transformers 5 (docs/facts.md)."""
    vocab, merges = clip_vocab()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_TOKENS)  # type: ignore[arg-type]


def run_pipeline(pipe: Any, image: Any, prompt: str, settings: Settings, output_type: str = "pil") -> Any:
    """One img2img call with ``settings``; returns the pipeline output. ``image`` is a PIL image (given once
    per generated image) or an already preprocessed (batch, 3, H, W) tensor (the simulation's)."""
    device = pipe._execution_device  # where the models run: with CPU offload, the GPU their hooks move them to
    # On meta no values exist: no generator, so that the noise is made on meta too (a CPU generator would make
    # diffusers draw it on the host: 2 GB at 16384 x 16384, batch 64). Elsewhere a generator on the device.
    generator = None if device.type == "meta" else torch.Generator(device).manual_seed(settings.seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe(
        prompt=prompt,
        # One image per generated image: diffusers deprecates duplicating a single init image for
        # num_images_per_prompt > 1 (a FutureWarning); passing the batch encodes each, as it will have to.
        image=[image] * settings.batch if settings.batch > 1 and not isinstance(image, torch.Tensor) else image,
        strength=settings.strength,
        guidance_scale=settings.guidance,
        num_inference_steps=settings.steps,
        num_images_per_prompt=settings.batch,
        generator=generator,
        output_type=output_type,
    )


@contextmanager
def _construction(device: str, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype``: no fp32 copy on the way, no host round trip."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _load_pretrained(model: str, device: str, dtype: torch.dtype, safety_checker: bool) -> Any:
    extra: dict[str, Any] = {} if safety_checker else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(model, dtype=dtype, **extra)
    except (OSError, ValueError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        first = text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."
        raise InputError(
            "Could not load the model '{name}' ({reason}); give a local folder as the {model}, or set {weights} "
            "to random to build the SD v1.5 architecture with random weights (same memory).",
            params=("model", "weights"), name=model, reason=first,
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


def reset_switches(pipe: Any) -> None:
    """Turn the VAE and attention switches off again (a simulator reuses its pipeline between runs)."""
    pipe.vae.disable_tiling()
    pipe.vae.disable_slicing()
    pipe.disable_attention_slicing()
