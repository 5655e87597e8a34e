"""SD v1.5: image-to-image (the seed's pipeline), text-to-image, and inpainting with its 9-channel UNet. Configs in
``data/sd15`` and ``data/sd15-inpaint``; the tiny architecture's in ``data/tiny``."""

from __future__ import annotations

from sdvram.pipelines.family import IMAGE, IMAGE_AND_MASK, TEXT, Component, Defaults, Family, StageHook

MODULE = "diffusers.pipelines.stable_diffusion"
PRETRAINED = "stable-diffusion-v1-5/stable-diffusion-v1-5"

UNET = Component("unet", "unet", "sd15/unet", "tiny/unet")
VAE = Component("vae", "vae", "sd15/vae", "tiny/vae")
TEXT_ENCODER = Component("text_encoder", "clip_text", "sd15/text_encoder", "tiny/text_encoder")
SAFETY_CHECKER = Component("safety_checker", "safety_checker", "sd15/safety_checker", "tiny/safety_checker")

# encode_prompt: the text encoder; vae.decode: the decoder; run_safety_checker: the checker
PROMPT = StageHook("pipe", "encode_prompt", "text_encoder")
DECODE = StageHook("vae", "decode", "vae_decode")
CHECKER = StageHook("pipe", "run_safety_checker", "safety_checker")
CHECKED = ("every stage of 12 profile records and 15 variants on an H200 (sm90) reproduced to the byte "
           "(docs/measurements)")

IMG2IMG = Family(
    name="sd15-img2img", title="SD v1.5 image-to-image", module=f"{MODULE}.pipeline_stable_diffusion_img2img",
    pipeline_class="StableDiffusionImg2ImgPipeline", components=(UNET, VAE, TEXT_ENCODER, SAFETY_CHECKER),
    scheduler="sd15/scheduler", inputs=IMAGE,
    stages=("load", "text_encoder", "vae_encode", "unet", "vae_decode", "safety_checker"),
    # prepare_latents encodes the image and adds the noise to its latent
    hooks=(PROMPT, StageHook("pipe", "prepare_latents", "vae_encode"), DECODE, CHECKER),
    # the seed's reference run: guidance 5 (diffusers' default is 7.5), 50 steps at strength 0.8
    defaults=Defaults(steps=50, strength=0.8, guidance=5.0, size=512), pretrained=PRETRAINED,
    feature_extractor="sd15/feature_extractor", image_per_output=True, seed_formula=True, checked=CHECKED,
)

TXT2IMG = Family(
    name="sd15-txt2img", title="SD v1.5 text-to-image", module=f"{MODULE}.pipeline_stable_diffusion",
    pipeline_class="StableDiffusionPipeline", components=(UNET, VAE, TEXT_ENCODER, SAFETY_CHECKER),
    scheduler="sd15/scheduler", inputs=TEXT, stages=("load", "text_encoder", "unet", "vae_decode", "safety_checker"),
    hooks=(PROMPT, DECODE, CHECKER), defaults=Defaults(steps=50, guidance=7.5, size=512), pretrained=PRETRAINED,
    feature_extractor="sd15/feature_extractor",
    checked=("every stage of 2 H200 (sm90) profile records, 512 and 1024 px, reproduced to the byte but the load "
             "stage's peak (1,024 bytes short); its allocator traces replayed exactly (docs/measurements)"),
)

INPAINT = Family(
    name="sd15-inpaint", title="SD v1.5 inpainting", module=f"{MODULE}.pipeline_stable_diffusion_inpaint",
    pipeline_class="StableDiffusionInpaintPipeline",
    components=(Component("unet", "unet", "sd15-inpaint/unet", "tiny/unet-inpaint"), VAE, TEXT_ENCODER,
                SAFETY_CHECKER),
    scheduler="sd15-inpaint/scheduler", inputs=IMAGE_AND_MASK,
    stages=("load", "text_encoder", "vae_encode", "unet", "vae_decode", "safety_checker"),
    # prepare_latents draws the noise (and encodes the image below strength 1); prepare_mask_latents encodes the
    # masked image: one stage from the first to the end of the second
    hooks=(PROMPT, StageHook("pipe", "prepare_latents", "vae_encode", ends=False),
           StageHook("pipe", "prepare_mask_latents", "vae_encode"), DECODE, CHECKER),
    defaults=Defaults(steps=50, strength=1.0, guidance=7.5, size=512),
    pretrained="stable-diffusion-v1-5/stable-diffusion-inpainting", feature_extractor="sd15/feature_extractor",
    checked=("every stage of 2 H200 (sm90) profile records, 800 x 528 and 1024 px, reproduced to the byte but the "
             "load stage's peak (1,024 bytes short) and one UNet peak (1 MiB short); its allocator traces replayed "
             "exactly (docs/measurements)"),
)

FAMILIES = (IMG2IMG, TXT2IMG, INPAINT)
