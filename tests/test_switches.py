"""diffusers' memory-saving switches: the real switch in `profile`, the same diffusers code on meta in
`simulate`, and CPU offload modelled from accelerate's hooks. On the CPU, `profile --device cpu` and the CPU
target of `simulate` run each VAE and attention switch and must agree; on meta, SD v1.5 at small sizes shows
each switch doing what its code says; tests/test_measurements.py holds them against the H200 runs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.choices import Architecture, Offload, Weights  # noqa: E402
from sdvram.cli import app  # noqa: E402
from sdvram.gpus import CPU, GPUS  # noqa: E402
from sdvram.profiler import profile  # noqa: E402
from sdvram.requests import ProfileOptions, RunRequest, Settings  # noqa: E402
from sdvram.simulate import SimulateOptions, simulate  # noqa: E402

from .test_simulate import CROSS_CHECK_TOLERANCE, FACTS_FP16_BYTES  # noqa: E402

runner = CliRunner()
H100 = GPUS["h100"]


def tiny(height: int, width: int, **settings) -> RunRequest:
    return RunRequest(height=height, width=width, prompt="a photo of a cat", architecture=Architecture.tiny,
                      settings=Settings(steps=10, **settings))


def sd15(height: int, width: int, **settings) -> RunRequest:
    return RunRequest(height=height, width=width, settings=Settings(steps=10, **settings))


def peaks(record) -> dict[str, int]:
    return {s.name: s.peak_allocated for s in record.stages}


# The tiny VAE's sample_size is 256: diffusers tiles images larger than that (tile_sample_min_size).
@pytest.mark.parametrize(("settings", "size", "acting"), [
    ({"vae_tiling": True}, (256, 320), {"vae_encode", "vae_decode"}),
    ({"vae_slicing": True, "batch": 2}, (64, 96), {"vae_encode", "vae_decode"}),
    ({"attention_slicing": "auto"}, (64, 96), {"unet"}),
    ({"attention_slicing": 1}, (64, 96), {"unet"}),
], ids=["vae-tiling", "vae-slicing", "attention-slicing-auto", "attention-slicing-1"])
def test_cpu_profile_and_simulation_agree_with_each_switch(settings: dict, size: tuple[int, int],
                                                           acting: set[str]) -> None:
    request = tiny(*size, **settings)
    measured = profile(request, ProfileOptions(device="cpu", weights=Weights.random)).record
    simulated = simulate(request, SimulateOptions(CPU))
    for real, sim in zip(measured.stages, simulated.stages, strict=True):
        assert abs(sim.peak_allocated - real.peak_allocated) <= CROSS_CHECK_TOLERANCE, real.name
        assert set(real.switches) == set(sim.switches) == ({next(iter(settings))} if real.name in acting else set())
    assert measured.settings.vae_tiling == settings.get("vae_tiling", False)
    assert measured.settings.attention_slicing == settings.get("attention_slicing")


def test_vae_tiling_lowers_the_vae_peaks_of_a_real_cpu_run() -> None:
    options = ProfileOptions(device="cpu", weights=Weights.random)
    plain = peaks(profile(tiny(256, 320), options).record)
    tiled = peaks(profile(tiny(256, 320, vae_tiling=True), options).record)
    assert tiled["vae_encode"] < plain["vae_encode"] and tiled["vae_decode"] < plain["vae_decode"]
    assert tiled["unet"] == plain["unet"]  # the UNet sees the same latents


@pytest.mark.parametrize("command", [
    ["profile", "--h", "128", "--w", "192", "--device", "cpu", "--weights", "random", "--architecture", "tiny"],
    ["simulate", "--h", "128", "--w", "192", "--gpu", "cpu"],
])
@pytest.mark.parametrize("mode", ["model", "sequential"])
def test_offload_on_the_cpu_is_refused(command: list[str], mode: str) -> None:
    result = runner.invoke(app, [*command, "--offload", mode])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --offload moves the models between the CPU and a GPU")


def test_sd15_vae_tiling_and_slicing_lower_the_vae_stages() -> None:
    plain, tiled = (peaks(simulate(sd15(1024, 1024, vae_tiling=t), SimulateOptions(H100))) for t in (False, True))
    assert tiled["vae_encode"] < plain["vae_encode"] and tiled["vae_decode"] < plain["vae_decode"]
    whole, sliced = (peaks(simulate(sd15(512, 512, batch=2, vae_slicing=s), SimulateOptions(H100)))
                     for s in (False, True))
    assert sliced["vae_decode"] < whole["vae_decode"]


def test_sd15_model_offload_moves_one_model_at_a_time() -> None:
    """enable_model_cpu_offload along text_encoder -> unet -> vae: nothing is on the GPU after loading; the
    text encoder runs alone; img2img's VAE encode loads the VAE (its hook offloads the UNet, not yet loaded); the
    first UNet call offloads the text encoder and loads the UNet; the decode offloads the UNet."""
    stages = {s.name: s for s in simulate(sd15(512, 512, offload=Offload.model), SimulateOptions(H100)).stages}
    unet, vae, text = FACTS_FP16_BYTES["unet"], FACTS_FP16_BYTES["vae"], FACTS_FP16_BYTES["text_encoder"]
    assert stages["load"].peak_allocated == 0
    assert text <= stages["text_encoder"].allocated_end < text + vae
    assert text + vae <= stages["vae_encode"].allocated_end < text + vae + unet
    assert unet + vae <= stages["unet"].allocated_end < unet + vae + text  # the text encoder went back
    assert vae <= stages["vae_decode"].allocated_end < unet  # the UNet went back


def test_sd15_sequential_offload_never_holds_a_whole_model() -> None:
    stages = simulate(sd15(512, 512, offload=Offload.sequential), SimulateOptions(H100)).stages
    assert stages[0].peak_allocated == 0
    for stage in stages:
        assert stage.peak_allocated < FACTS_FP16_BYTES["unet"] / 2, stage.name
        assert stage.switches == ["sequential_offload"]


def test_sd15_attention_slicing_runs_the_sliced_processor() -> None:
    """diffusers' SlicedAttnProcessor computes attention with baddbmm and softmax, a slice of heads at a time,
    instead of one fused SDPA call: the UNet's SDPA calls (head dims 40, 80, 160) disappear, and the score
    matrices it materialises raise the UNet's peak (as measured on the H200: tests/test_measurements.py)."""
    plain = simulate(sd15(512, 512), SimulateOptions(H100))
    sliced = simulate(sd15(512, 512, attention_slicing="auto"), SimulateOptions(H100))
    unet_dims = {40, 80, 160}
    assert unet_dims <= {c["head_dim"] for c in plain.simulation.attention_calls}
    assert not unet_dims & {c["head_dim"] for c in sliced.simulation.attention_calls}
    assert sliced.stage("unet").peak_allocated > plain.stage("unet").peak_allocated
    assert sliced.stage("unet").switches == ["attention_slicing"]
