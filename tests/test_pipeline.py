"""Building SD v1.5 from the shipped configs: exact parameter counts, and the real CLIP tokenizer."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram import architecture  # noqa: E402
from sdvram.engine import expected_unet_calls  # noqa: E402
from sdvram.pipeline import build_pipeline, clip_tokenizer  # noqa: E402
from sdvram.pipelines import FAMILIES  # noqa: E402
from sdvram.requests import Settings  # noqa: E402

# docs/facts.md, "Parameter counts" (built from the SD v1.5 configs, random init)
FACTS_PARAMS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480, "safety_checker": 303_981_588}
FACTS_VAE_SPLIT = (34_163_664, 49_490_199)  # encoder, decoder
FACTS_FP16_BYTES_ALL_FOUR = 2_740_436_462


@pytest.fixture(scope="module")
def meta_pipe():
    return build_pipeline(FAMILIES["sd15-img2img"], device="meta", dtype="float16", safety_checker=True)


def _params(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_sd15_parameter_counts_equal_facts(meta_pipe) -> None:
    for name, count in FACTS_PARAMS.items():
        assert _params(getattr(meta_pipe, name)) == count, name
    vae = meta_pipe.vae
    assert (_params(vae.encoder) + _params(vae.quant_conv), _params(vae.decoder) + _params(vae.post_quant_conv)) \
        == FACTS_VAE_SPLIT


def test_architecture_constants_equal_facts() -> None:
    assert architecture.UNET_PARAMS == FACTS_PARAMS["unet"]
    assert architecture.VAE_PARAMS == FACTS_PARAMS["vae"]
    assert (architecture.VAE_ENCODER_PARAMS, architecture.VAE_DECODER_PARAMS) == FACTS_VAE_SPLIT
    assert architecture.TEXT_ENCODER_PARAMS == FACTS_PARAMS["text_encoder"]
    assert architecture.SAFETY_CHECKER_PARAMS == FACTS_PARAMS["safety_checker"]


def test_fp16_bytes_of_all_four_equal_facts(meta_pipe) -> None:
    total = 0
    for name in FACTS_PARAMS:
        module = getattr(meta_pipe, name)
        total += sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
    assert total == FACTS_FP16_BYTES_ALL_FOUR
    buffers = architecture.TEXT_ENCODER_BUFFER_BYTES + architecture.SAFETY_CHECKER_BUFFER_BYTES
    assert total == 2 * sum(FACTS_PARAMS.values()) + buffers


def test_pipeline_tokenizer_is_real_clip_bpe() -> None:
    tokenizer = clip_tokenizer()
    ids = tokenizer("a photo of a cat", padding="max_length", max_length=77, truncation=True)["input_ids"]
    # bos, "a</w>" 320, "photo</w>" 1125, "of</w>" 539, "a</w>", "cat</w>" 2368, eos, then eos as padding
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77 and set(ids[7:]) == {49407}
    assert len(tokenizer) == 49408


def test_unet_is_called_41_times_for_50_steps_at_strength_0_8(meta_pipe) -> None:
    # FACTS.md: PNDM (skip_prk_steps) repeats one timestep, so 40 denoising steps take 41 UNet calls.
    img2img = FAMILIES["sd15-img2img"]
    assert expected_unet_calls(meta_pipe.scheduler, Settings(steps=50, strength=0.8), img2img) == 41
    scheduler = meta_pipe.scheduler
    scheduler.set_timesteps(20)
    assert len(scheduler.timesteps) == 21  # one repeated timestep
    assert expected_unet_calls(scheduler, Settings(steps=20, strength=0.5), img2img) == 21 - (20 - 10)  # 10 cut
    # text-to-image runs the whole schedule, whatever a strength says
    assert expected_unet_calls(scheduler, Settings(steps=20, strength=0.5), FAMILIES["sd15-txt2img"]) == 21


# The families' components as commonly cited (docs/facts.md for SDXL; the model cards and diffusers' docs for the
# others): the shipped configs must build exactly these
FAMILY_PARAMS = {
    "sd15-inpaint": {"unet": 859_535_364},  # SD v1.5's UNet with a conv_in of 9 channels: + 320 x 5 x 3 x 3
    "sd21-txt2img": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl-txt2img": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                     "text_encoder_2": 694_659_840},
}


@pytest.mark.parametrize("name", list(FAMILY_PARAMS))
def test_family_parameter_counts(name: str) -> None:
    pipe = build_pipeline(FAMILIES[name], device="meta", dtype="float16", safety_checker=False)
    for component, count in FAMILY_PARAMS[name].items():
        assert _params(getattr(pipe, component)) == count, component
    assert 859_535_364 - FACTS_PARAMS["unet"] == 320 * 5 * 3 * 3  # the inpainting UNet's 5 more input channels
