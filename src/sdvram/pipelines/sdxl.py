"""SDXL base 1.0: text-to-image and image-to-image, two text encoders and the text-time embedding. Its stock VAE has
``force_upcast``: a float16 pipeline casts the VAE to float32 around each encode and decode (diffusers'
``pipeline_stable_diffusion_xl.py``: ``upcast_vae``; ``..._img2img.py``: ``prepare_latents``), which the simulation
runs as it is. ``--vae fp16-fix`` builds the widely used VAE without the upcast. Configs in ``data/sdxl``."""

from __future__ import annotations

from sdvram.pipelines.family import IMAGE, TEXT, Component, Defaults, Family, StageHook

MODULE = "diffusers.pipelines.stable_diffusion_xl"
COMPONENTS = (
    Component("unet", "unet", "sdxl/unet", "tiny/unet-sdxl"),
    Component("vae", "vae", "sdxl/vae", "tiny/vae"),
    Component("text_encoder", "clip_text", "sdxl/text_encoder", "tiny/text_encoder"),
    Component("text_encoder_2", "clip_text_projection", "sdxl/text_encoder_2", "tiny/text_encoder_2"),
)
VAES = {"fp16-fix": "sdxl-vae-fp16-fix/vae"}
PROMPT = StageHook("pipe", "encode_prompt", "text_encoder")
# The decoder's stage begins where the pipeline upcasts the VAE for it (float16 with force_upcast), else at decode
DECODE = (StageHook("pipe", "upcast_vae", "vae_decode", ends=False), StageHook("vae", "decode", "vae_decode"))
CHECKED = ("5 H200 (sm90) profile records (txt2img at 1024 and 2048 px and with the fp16-fix VAE, img2img at 800 x 528 "
           "and 2048 px): peak allocated to the byte, or 15-16 MiB short where the float32 VAE decodes (its float32 "
           "convolution workspaces, 0.06-0.13%); their allocator traces replayed exactly (docs/measurements)")

TXT2IMG = Family(
    name="sdxl-txt2img", title="SDXL base 1.0 text-to-image", module=f"{MODULE}.pipeline_stable_diffusion_xl",
    pipeline_class="StableDiffusionXLPipeline", components=COMPONENTS, scheduler="sdxl/scheduler", inputs=TEXT,
    stages=("load", "text_encoder", "unet", "vae_decode"), hooks=(PROMPT, *DECODE),
    defaults=Defaults(steps=50, guidance=5.0, size=1024), pretrained="stabilityai/stable-diffusion-xl-base-1.0",
    tokenizers=("tokenizer", "tokenizer_2"), vaes=VAES, upcasts_vae=True, checked=CHECKED,
)

IMG2IMG = Family(
    name="sdxl-img2img", title="SDXL base 1.0 image-to-image", module=f"{MODULE}.pipeline_stable_diffusion_xl_img2img",
    pipeline_class="StableDiffusionXLImg2ImgPipeline", components=COMPONENTS, scheduler="sdxl/scheduler",
    inputs=IMAGE, stages=("load", "text_encoder", "vae_encode", "unet", "vae_decode"),
    hooks=(PROMPT, StageHook("pipe", "prepare_latents", "vae_encode"), *DECODE),
    defaults=Defaults(steps=50, strength=0.3, guidance=5.0, size=1024),
    pretrained="stabilityai/stable-diffusion-xl-base-1.0", tokenizers=("tokenizer", "tokenizer_2"), vaes=VAES,
    upcasts_vae=True, checked=CHECKED,
)

FAMILIES = (TXT2IMG, IMG2IMG)
