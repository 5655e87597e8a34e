"""The pipeline families through one engine: each family's tiny variant profiled on the CPU and simulated for the
CPU target, stage by stage; each family's default run through the CLI; the load stage against the weights as the
caching allocator holds them; SDXL's float32 decode; and what each family refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdvram.choices import Architecture, Weights  # noqa: E402
from sdvram.cli import app  # noqa: E402
from sdvram.gpus import CPU, GPUS  # noqa: E402
from sdvram.pipeline import build_order, build_pipeline  # noqa: E402
from sdvram.pipelines import FAMILIES, IMAGE_AND_MASK  # noqa: E402
from sdvram.profiler import profile  # noqa: E402
from sdvram.requests import ProfileOptions, RunRequest, settings_for  # noqa: E402
from sdvram.simulate import SimulateOptions, simulate  # noqa: E402

from .test_simulate import CROSS_CHECK_TOLERANCE  # noqa: E402

runner = CliRunner()
OTHERS = [name for name in FAMILIES if name != "sd15-img2img"]  # sd15-img2img has its own tests


def tiny(name: str, **settings: object) -> RunRequest:
    family = FAMILIES[name]
    return RunRequest(height=64, width=96, prompt="a photo of a cat", architecture=Architecture.tiny, pipeline=name,
                      settings=settings_for(family, steps=6, **settings))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", OTHERS)
def test_cpu_target_follows_a_real_cpu_run_of_each_family(name: str) -> None:
    """The tiny variant of the family (for SDXL two text encoders and the text-time embedding) run for real on the
    CPU, and simulated for the CPU target: every stage within four 512-byte blocks, as for SD v1.5 img2img."""
    request = tiny(name, safety_checker=FAMILIES[name].has_safety_checker)
    measured = profile(request, ProfileOptions(device="cpu", weights=Weights.random)).record
    simulated = simulate(request, SimulateOptions(CPU))
    assert [s.name for s in measured.stages] == list(FAMILIES[name].stages)
    assert [s.name for s in simulated.stages] == [s.name for s in measured.stages]
    for real, sim in zip(measured.stages, simulated.stages, strict=True):
        assert abs(sim.allocated_start - real.allocated_start) <= CROSS_CHECK_TOLERANCE, real.name
        assert abs(sim.peak_allocated - real.peak_allocated) <= CROSS_CHECK_TOLERANCE, real.name
        assert (sim.unet_calls, sim.peak_call) == (real.unet_calls, real.peak_call), real.name


@pytest.mark.parametrize("name", list(FAMILIES))
def test_the_load_stage_is_the_weights_as_the_allocator_holds_them(name: str) -> None:
    """Each family's components built on meta here: the simulated load stage ends holding each parameter and
    buffer as the caching allocator holds it, its bytes rounded up to 512 (``round_size``) plus, for a request
    of over 1 MiB, at most the 1 MiB the allocator leaves unsplit in its block (``should_split``); SD v1.5's
    figure is the H200's, to the byte (tests/test_measurements.py). docs/simulate.md states each family's."""
    family = FAMILIES[name]
    pipe = build_pipeline(family, device="meta", dtype="float16", safety_checker=family.has_safety_checker)
    sizes = [t.numel() * t.element_size() for c in build_order(family, family.has_safety_checker)
             for t in (*getattr(pipe, c).parameters(), *getattr(pipe, c).buffers())]
    rounded = sum(-(-size // 512) * 512 for size in sizes)
    unsplit = sum(1 for size in sizes if size > 2**20) * 2**20
    request = RunRequest(pipeline=name, settings=settings_for(family, steps=10,
                                                              safety_checker=family.has_safety_checker))
    record = simulate(request, SimulateOptions(GPUS["h100"]))
    load = record.stage("load").allocated_end
    assert rounded <= load <= rounded + unsplit
    assert sum(w["bytes"] for w in record.simulation.weights.values()) == sum(sizes)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_runs_through_the_cli_at_its_default_size(name: str, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    result = runner.invoke(app, ["simulate", "--pipeline", name, "--gpu", "rtx4090", "--json", str(path)])
    assert result.exit_code == 0, result.output
    record = json.loads(path.read_text())
    family = FAMILIES[name]
    side = family.defaults.size
    assert (record["settings"]["pipeline"], record["inputs"]["width"], record["inputs"]["height"]) == (name, side,
                                                                                                       side)
    assert [s["name"] for s in record["stages"]] == [s for s in family.stages if s != "safety_checker"]
    assert (record["settings"]["steps"], record["settings"]["guidance"]) == (family.defaults.steps,
                                                                             family.defaults.guidance)
    assert any(s["formula"] is not None for s in record["stages"]) == family.seed_formula


def test_sdxl_decodes_in_float32_unless_its_vae_is_the_fp16_fix() -> None:
    """force_upcast: the stock VAE is cast to float32 for the decode (its attention then runs in float32), and the
    decode needs more than with the fp16-fix VAE, which decodes in float16; the UNet loop is the same."""
    family = FAMILIES["sdxl-txt2img"]
    runs = {vae: simulate(RunRequest(pipeline=family.name, height=768, width=768, vae=vae,
                                     settings=settings_for(family, steps=4)), SimulateOptions(GPUS["h100"]))
            for vae in (None, "fp16-fix")}
    vae_attention = {vae: {c["dtype"] for c in r.simulation.attention_calls if c["head_dim"] == 512}
                     for vae, r in runs.items()}
    assert vae_attention == {None: {"float32"}, "fp16-fix": {"float16"}}
    assert runs[None].stage("unet").peak_allocated == runs["fp16-fix"].stage("unet").peak_allocated
    # the decoder's stage holds the float32 weights (2 x the 167 MB of float16 ones) and float32 activations
    assert runs[None].stage("vae_decode").peak_allocated > runs["fp16-fix"].stage("vae_decode").peak_allocated + \
        2 * 83_653_863 * 2
    assert runs[None].stage("vae_decode").allocated_start == runs["fp16-fix"].stage("vae_decode").allocated_start


def test_inpainting_takes_a_mask_of_the_image(tmp_path: Path, make_jpeg) -> None:
    from PIL import Image

    image = make_jpeg(200, 136)
    mask = tmp_path / "mask.png"
    Image.new("L", (200, 136), 255).save(mask)
    result = runner.invoke(app, ["simulate", str(image), "--pipeline", "sd15-inpaint", "--mask", str(mask),
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["inputs"]["mask"] == str(mask) and record["settings"]["strength"] == 1.0
    assert FAMILIES["sd15-inpaint"].inputs == IMAGE_AND_MASK


@pytest.mark.parametrize(("args", "says"), [
    (["--pipeline", "sd3"], "Unknown --pipeline 'sd3'; the pipelines are sd15-img2img, sd15-txt2img, sd15-inpaint, "
                            "sd21-txt2img, sdxl-txt2img, sdxl-img2img."),
    (["--pipeline", "sd15-txt2img", "--strength", "0.5"], "--strength applies to pipelines that start from an image"),
    (["--pipeline", "sdxl-txt2img", "--safety-checker"], "--pipeline sdxl-txt2img ships no safety checker"),
    (["--pipeline", "sd15-img2img", "--vae", "fp16-fix"], "--vae 'fp16-fix' is not a VAE of sd15-img2img"),
    (["--pipeline", "sd15-txt2img", "--mask", "images/bench--high-res.jpg"], "--mask is for inpainting"),
])
def test_what_a_family_does_not_take_is_one_sentence(args: list[str], says: str) -> None:
    result = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", *args])
    assert result.exit_code == 2
    assert says in result.stderr and "Traceback" not in result.stderr


def test_estimate_says_the_seed_formula_does_not_apply() -> None:
    result = runner.invoke(app, ["estimate", "--h", "1024", "--w", "1024", "--tokens", "20", "--pipeline",
                                 "sdxl-txt2img", "--json"])
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["pipeline"] == "sdxl-txt2img" and document["seed_formula_applies"] is False
    assert "simulate sdxl-txt2img" in document["calibrated"]["unavailable"]
    table = runner.invoke(app, ["estimate", "--h", "1024", "--w", "1024", "--tokens", "20", "--pipeline",
                                "sd21-txt2img"])
    assert table.stdout.splitlines()[0].startswith("Seed formula: does not apply to SD 2.1 text-to-image")


def test_sweep_and_fit_take_a_pipeline(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sweep", "--pipeline", "sd21-txt2img", "--sizes", "512,768", "--gpu", "rtx3060",
                                 "--json", "-"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert [r["width"] for r in document["rows"]] == [512, 768]
    assert all(r["formula_total"] is None for r in document["rows"])  # the seed formula does not apply
