"""`sdvram profile` on the CPU: the real diffusers img2img pipeline (tiny configuration, SD's 8x latent),
instrumented by the live-tensor meter, through the library and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, PNDMScheduler  # noqa: E402

from sdvram.architecture import component_config  # noqa: E402
from sdvram.cli import app  # noqa: E402
from sdvram.profiler import ProfileRequest, profile  # noqa: E402
from sdvram.record import write_json_atomic  # noqa: E402

from .conftest import IMAGES  # noqa: E402

runner = CliRunner()
TINY = ["--device", "cpu", "--weights", "random", "--architecture", "tiny"]
STAGES = ["load", "text_encoder", "vae_encode", "unet", "vae_decode", "safety_checker"]


@pytest.fixture(scope="module")
def tiny_record():
    request = ProfileRequest(height=128, width=192, device="cpu", weights="random", architecture="tiny",
                             prompt="a photo of a cat")
    return profile(request)


def test_every_stage_is_recorded_in_order(tiny_record) -> None:
    assert [s.name for s in tiny_record.stages] == STAGES
    assert tiny_record.status == "completed"
    assert all(s.completed for s in tiny_record.stages)


def test_unet_call_count_matches_the_scheduler(tiny_record) -> None:
    scheduler = PNDMScheduler.from_config(component_config("scheduler"))
    scheduler.set_timesteps(50)
    t_start = 50 - int(50 * 0.8)  # StableDiffusionImg2ImgPipeline.get_timesteps
    expected = len(scheduler.timesteps[t_start * scheduler.order:])
    unet = tiny_record.stage("unet")
    assert unet.unet_calls == expected == 41
    assert 1 <= unet.peak_call <= expected


def test_activations_are_positive_and_peaks_consistent(tiny_record) -> None:
    for stage in tiny_record.stages:
        assert stage.activation > 0, stage.name
        assert stage.peak_allocated <= tiny_record.peak_allocated
    assert tiny_record.peak_allocated == max(s.peak_allocated for s in tiny_record.stages)


def test_weights_resident_after_load_equal_the_tiny_models_bytes(tiny_record) -> None:
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(component_config("vae", "tiny"))
    vae_bytes = sum(p.numel() * 4 for p in vae.parameters())  # float32
    load = tiny_record.stage("load")
    assert load.allocated_start == 0
    assert load.allocated_end > vae_bytes  # the VAE is one of four models


def test_vae_decoder_peak_exceeds_its_output_image(tiny_record) -> None:
    output_bytes = 1 * 3 * 128 * 192 * 4  # (batch, RGB, H, W) float32
    assert tiny_record.stage("vae_decode").activation > output_bytes


def test_formula_sits_beside_each_stage(tiny_record) -> None:
    seed = tiny_record.formula["bytes"]
    assert tiny_record.stage("load").formula == seed["base"]
    assert tiny_record.stage("unet").formula == seed["unet"]
    assert tiny_record.stage("vae_decode").formula == seed["vae_decode"]
    assert tiny_record.stage("text_encoder").formula is None
    assert tiny_record.formula["inputs"]["tokens"] == 7  # "a photo of a cat": bos + 5 + eos
    assert any("pads every prompt to 77 tokens" in note for note in tiny_record.notes)


def test_json_record_round_trips(tiny_record, tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    write_json_atomic(path, tiny_record.to_json())
    loaded = json.loads(path.read_text())
    assert loaded == json.loads(json.dumps(tiny_record.to_json()))
    assert [s["name"] for s in loaded["stages"]] == STAGES
    unet = loaded["stages"][3]
    assert unet["activation"] == unet["peak_allocated"] - unet["allocated_start"]
    assert loaded["settings"]["steps"] == 50 and loaded["settings"]["guidance"] == 5.0
    assert loaded["environment"]["torch"] == torch.__version__


def test_json_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "keep.json"
    path.write_text('{"old": true}')
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})  # cannot be serialised
    assert path.read_text() == '{"old": true}'
    assert list(tmp_path.iterdir()) == [path]  # no temporary left behind


def test_cli_profile_on_cpu_writes_json_and_image(tmp_path: Path) -> None:
    record_path, image_path = tmp_path / "r.json", tmp_path / "out.png"
    result = runner.invoke(app, ["profile", str(IMAGES / "balloon--low-res.jpeg"), *TINY, "--steps", "4",
                                 "--strength", "0.5", "--json", str(record_path), "--save-image", str(image_path)])
    assert result.exit_code == 0, result.stderr
    assert "measured" in result.stdout and "UNet loop" in result.stdout
    record = json.loads(record_path.read_text())
    assert record["inputs"]["prompt_source"] == "manifest"
    assert record["inputs"]["pipeline_width"] == 392 and record["inputs"]["pipeline_height"] == 376
    assert record["stages"][3]["unet_calls"] == 3  # PNDM: int(4 x 0.5) = 2 steps, plus the repeated timestep
    with Image.open(image_path) as out:
        assert out.size == (392, 376)


def test_cli_profile_out_of_memory_names_the_stage_and_keeps_the_record(tmp_path: Path, monkeypatch) -> None:
    def decode(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(AutoencoderKL, "decode", decode)
    path = tmp_path / "partial.json"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *TINY, "--steps", "2", "--strength", "1",
                                 "--json", str(path)])
    assert result.exit_code == 5
    lines = result.stderr.splitlines()
    assert lines[0] == f"wrote {path}"
    # the stage raised CUDA's error type; the run itself was on the CPU, so the sentence says "memory"
    assert len(lines) == 2 and lines[1].startswith("error: Out of memory in the VAE decoder stage: ")
    assert "the seed formula estimated" in result.stderr
    assert "Traceback" not in result.stderr
    record = json.loads(path.read_text())
    assert record["status"] == "out_of_memory"
    assert record["failed_stage"] == "vae_decode"
    assert [s["name"] for s in record["stages"]] == ["load", "text_encoder", "vae_encode", "unet", "vae_decode"]
    assert record["stages"][-1]["completed"] is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA device")
def test_no_cuda_device_exit_3() -> None:
    result = runner.invoke(app, ["profile", str(IMAGES / "balloon--low-res.jpeg")])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: No CUDA device is available")
    assert "--device cpu" in result.stderr and "sdvram estimate" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be a whole number from 1 to 1000; got 0."),
        (["--strength", "0"], "--strength must be above 0 and at most 1; got 0."),
        (["--steps", "2", "--strength", "0.4"], "leaves no denoising step"),
        (["--batch", "0"], "--batch must be a whole number of images from 1 to 64; got 0."),
        (["--device", "tpu"], "--device must be cuda, cuda:N or cpu; got 'tpu'."),
    ],
)
def test_profile_bad_settings_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *TINY, *args])
    assert result.exit_code == 2
    assert message in result.stderr


def test_tiny_needs_random_weights() -> None:
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", "--device", "cpu", "--architecture", "tiny"])
    assert result.exit_code == 2
    assert "--architecture tiny has no pretrained weights; add --weights random." in result.stderr


def test_missing_profile_extra_exit_4() -> None:
    code = (
        "import sys\n"
        "sys.modules['diffusers'] = None  # as if the profile extra were not installed\n"
        "from sdvram.cli import main\n"
        "sys.argv = ['sdvram', 'profile', sys.argv[1], '--device', 'cpu']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(IMAGES / "balloon--low-res.jpeg")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 4
    assert proc.stderr.strip() == (
        "error: This command needs the 'profile' extra (diffusers is not installed); "
        "install it with: pip install 'sdvram[profile]'"
    )


def test_output_paths_are_checked_before_the_run(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "r.json"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *TINY, "--json", str(missing)])
    assert result.exit_code == 2
    assert result.stderr == f"error: {missing.parent} does not exist; create it or give another path for the " \
        "JSON record.\n"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *TINY, "--save-image", str(tmp_path)])
    assert result.exit_code == 2
    assert "is a folder; give a file name for the output image." in result.stderr


def test_prompt_overrides_the_manifest() -> None:
    request = ProfileRequest(image=IMAGES / "truck--high-res.jpg", prompt="a red truck", device="cpu",
                             weights="random", architecture="tiny")
    from sdvram.profiler import resolve_inputs

    formula, picture = resolve_inputs(request)
    assert formula.prompt == "a red truck" and formula.tokens_source == "--prompt"
    assert formula.seed.tokens == 5  # bos, "a", "red", "truck", eos
    assert picture.size == (1800, 1200)
