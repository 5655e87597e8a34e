"""SD 2.1: text-to-image at 768 x 768 with v-prediction and OpenCLIP ViT-H's text tower. Configs in ``data/sd21``."""

from __future__ import annotations

from sdvram.pipelines.family import TEXT, Component, Defaults, Family, StageHook

TXT2IMG = Family(
    name="sd21-txt2img", title="SD 2.1 text-to-image",
    module="diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion", pipeline_class="StableDiffusionPipeline",
    components=(Component("unet", "unet", "sd21/unet", "tiny/unet-sd21"),
                Component("vae", "vae", "sd21/vae", "tiny/vae"),
                Component("text_encoder", "clip_text", "sd21/text_encoder", "tiny/text_encoder-sd21")),
    scheduler="sd21/scheduler", inputs=TEXT, stages=("load", "text_encoder", "unet", "vae_decode"),
    hooks=(StageHook("pipe", "encode_prompt", "text_encoder"), StageHook("vae", "decode", "vae_decode")),
    defaults=Defaults(steps=50, guidance=7.5, size=768), pretrained="stabilityai/stable-diffusion-2-1",
    checked=("every stage of 2 H200 (sm90) profile records, 768 and 1536 px, reproduced to the byte but the load "
             "stage's peak (1,024 bytes short); its allocator traces replayed exactly (docs/measurements)"),
)

FAMILIES = (TXT2IMG,)
