"""Facts about the SD v1.5 architecture that the estimate path needs: parameter counts, without torch.

The counts were obtained by building each component from its published SD v1.5 config (the JSON files in
``data/sd15/``, which ``pipeline.py`` builds from) and summing ``p.numel()`` over its parameters; they match
``docs/facts.md``. ``tests/test_pipeline.py`` rebuilds the models and checks every number here.
"""

from __future__ import annotations

from typing import Any

# Parameter counts, counted from the SD v1.5 component configs (random init; shapes alone decide them).
UNET_PARAMS = 859_520_964  # UNet2DConditionModel
VAE_ENCODER_PARAMS = 34_163_664  # AutoencoderKL encoder + quant_conv
VAE_DECODER_PARAMS = 49_490_199  # AutoencoderKL decoder + post_quant_conv
VAE_PARAMS = VAE_ENCODER_PARAMS + VAE_DECODER_PARAMS  # 83,653,863
TEXT_ENCODER_PARAMS = 123_060_480  # CLIPTextModel (ViT-L/14 text tower)
SAFETY_CHECKER_PARAMS = 303_981_588  # StableDiffusionSafetyChecker (ViT-L/14 vision tower + projections)

# Non-parameter buffers that also live on the GPU (int64 position ids, 8 bytes each).
TEXT_ENCODER_BUFFER_BYTES = 77 * 8  # position_ids, one per CLIP position
SAFETY_CHECKER_BUFFER_BYTES = 257 * 8  # vision position_ids: 16 x 16 patches + the class token

# Geometry shared by every SD v1.5 stage.
VAE_SCALE_FACTOR = 8  # 3 VAE downsamplings of 2: a latent pixel covers 8 x 8 image pixels
LATENT_CHANNELS = 4  # AutoencoderKL latent_channels
RGB_CHANNELS = 3  # the pipeline's image tensors are RGB
CLIP_MAX_TOKENS = 77  # CLIP's max_position_embeddings; the pipeline pads and truncates to this

# The smallest image side each architecture runs: the tiny VAE's 32-channel GroupNorm (32 groups) has one value
# per group on a 1 x 1 latent and torch refuses it ("Expected more than 1 value per channel"); SD v1.5's
# groups hold 4 to 40 channels, so one latent pixel (8 px) runs.
MIN_SIDE = {"full": VAE_SCALE_FACTOR, "tiny": 2 * VAE_SCALE_FACTOR}

MODELS = ("unet", "vae", "text_encoder", "safety_checker")  # the components with weights


def data_config(path: str) -> dict[str, Any]:
    """A config shipped in ``sdvram/data``, by its path there without the extension: "sdxl/unet". Each folder's
    README.md says which public model repository it copies."""
    import json  # here, not at the top: the estimate path never reads a config
    from importlib import resources

    folder, name = path.split("/")
    text = (resources.files("sdvram") / "data" / folder / f"{name}.json").read_text(encoding="utf-8")
    config: dict[str, Any] = json.loads(text)
    return config


def component_config(name: str, architecture: str = "full") -> dict[str, Any]:
    """The config of one SD v1.5 component (unet, vae, text_encoder, safety_checker, scheduler,
    feature_extractor): "full", the published SD v1.5 configs (``data/sd15``; "sd15" is read the same), or "tiny",
    a miniature with the same classes and the 8x latent for running the real pipeline on a CPU in seconds
    (``data/tiny/README.md``), which shares SD v1.5's scheduler and feature extractor. The other families' configs
    are read through their ``sdvram.pipelines`` records (``data_config``)."""
    folder = "tiny" if architecture == "tiny" and name in MODELS else "sd15"
    return data_config(f"{folder}/{name}")
