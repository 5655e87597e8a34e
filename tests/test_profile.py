"""`sdvram profile` on the CPU: the real diffusers img2img pipeline (tiny configuration, SD's 8x latent),
measured by the live-tensor meter, through the library and through the CLI; and everything that can go
wrong around a run: out of memory, outputs that cannot be written, bad values caught before building."""

from __future__ import annotations

import io
import json
import os
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

from .conftest import IMAGES  # noqa: E402

runner = CliRunner()
TINY = ["--device", "cpu", "--weights", "random", "--architecture", "tiny"]
QUICK = [*TINY, "--steps", "2", "--strength", "1"]
STAGES = ["load", "text_encoder", "vae_encode", "unet", "vae_decode", "safety_checker"]


def test_every_stage_is_recorded_in_order(tiny_profile) -> None:
    record = tiny_profile.record
    assert [s.name for s in record.stages] == STAGES
    assert record.status == "completed" and all(s.completed for s in record.stages)
    assert tiny_profile.image.size == (192, 128)


def test_unet_call_count_matches_the_scheduler(tiny_profile) -> None:
    scheduler = PNDMScheduler.from_config(component_config("scheduler"))
    scheduler.set_timesteps(10)
    t_start = 10 - int(10 * 0.8)  # StableDiffusionImg2ImgPipeline.get_timesteps
    expected = len(scheduler.timesteps[t_start * scheduler.order:])
    unet = tiny_profile.record.stage("unet")
    assert unet.unet_calls == expected == 9
    assert 1 <= unet.peak_call <= expected


def test_weights_resident_after_load_are_the_models_bytes(tiny_profile) -> None:
    """After loading, the CPU holds every weight and buffer of the four tiny models (built here on meta from the
    same configs, in float32, the CPU's dtype; position ids int64) and the PNDM scheduler's three tables of its
    1,000 training steps (betas, alphas, alphas_cumprod: float32, made when the pipeline builds it)."""
    from diffusers import UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        models = [UNet2DConditionModel.from_config(component_config("unet", "tiny")),
                  AutoencoderKL.from_config(component_config("vae", "tiny")),
                  CLIPTextModel(CLIPTextConfig(**component_config("text_encoder", "tiny"))),
                  StableDiffusionSafetyChecker(CLIPConfig(**component_config("safety_checker", "tiny")))]
    weights = sum(t.numel() * t.element_size() for m in models for t in (*m.parameters(), *m.buffers()))
    scheduler_tables = 3 * component_config("scheduler")["num_train_timesteps"] * 4
    load = tiny_profile.record.stage("load")
    assert load.allocated_start == 0
    assert load.allocated_end == weights + scheduler_tables


def test_the_text_encoder_leaves_two_prompt_embeddings(tiny_profile) -> None:
    # guidance 5 > 1: encode_prompt returns the prompt's and the negative prompt's embeddings, each 1 x 77 tokens x
    # the text encoder's hidden size, float32; both stay until the UNet loop concatenates them
    hidden = component_config("text_encoder", "tiny")["hidden_size"]
    stage = tiny_profile.record.stage("text_encoder")
    assert stage.allocated_end - stage.allocated_start == 2 * 77 * hidden * 4


def test_vae_decoder_peak_exceeds_its_output_image(tiny_profile) -> None:
    output_bytes = 1 * 3 * 128 * 192 * 4  # (batch, RGB, H, W) float32
    assert tiny_profile.record.stage("vae_decode").activation > output_bytes


def test_formula_sits_beside_each_stage(tiny_profile) -> None:
    record = tiny_profile.record
    seed = record.formula["bytes"]
    assert record.stage("load").formula == seed["base"]
    assert record.stage("unet").formula == seed["unet"]
    assert record.stage("vae_decode").formula == seed["vae_decode"]
    assert record.stage("text_encoder").formula is None
    assert record.formula["inputs"]["tokens"] == 7  # "a photo of a cat": bos + 5 + eos
    assert any("pads every prompt to 77 tokens" in note for note in record.notes)


def test_json_record_round_trips(tiny_profile) -> None:
    from sdvram.record import Record

    document = json.loads(json.dumps(tiny_profile.record.to_json()))
    assert Record.from_json(document).to_json() == document
    unet = document["stages"][3]
    assert unet["activation"] == unet["peak_allocated"] - unet["allocated_start"]
    assert document["settings"]["steps"] == 10 and document["settings"]["guidance"] == 5.0
    assert document["environment"]["torch"] == torch.__version__


def test_cli_writes_json_then_image(tmp_path: Path) -> None:
    record_path, image_path = tmp_path / "r.json", tmp_path / "out.png"
    result = runner.invoke(app, ["profile", str(IMAGES / "balloon--low-res.jpeg"), *TINY, "--steps", "4",
                                 "--strength", "0.5", "--json", str(record_path), "--save-image", str(image_path)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("Peak ") and "(measured, VAE decoder)" in result.stdout.splitlines()[0]
    assert result.stderr.splitlines() == [f"wrote {record_path}", f"wrote {image_path}"]
    record = json.loads(record_path.read_text())
    assert record["inputs"]["prompt_source"] == "manifest"
    assert (record["inputs"]["pipeline_width"], record["inputs"]["pipeline_height"]) == (392, 376)
    assert record["stages"][3]["unet_calls"] == 3  # PNDM: int(4 x 0.5) = 2 steps, plus the repeated timestep
    with Image.open(image_path) as out:
        assert out.size == (392, 376)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "r.json"]  # no temporaries left


def test_gpu_out_of_memory_names_the_stage_and_keeps_the_record(tmp_path: Path, monkeypatch) -> None:
    def decode(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(AutoencoderKL, "decode", decode)
    path = tmp_path / "partial.json"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", str(path)])
    assert result.exit_code == 5
    lines = result.stderr.splitlines()
    assert lines[0] == f"wrote {path}"
    assert len(lines) == 2 and lines[1].startswith("error: Out of memory in the VAE decoder stage: ")
    record = json.loads(path.read_text())
    assert (record["status"], record["failed_stage"]) == ("out_of_memory", "vae_decode")
    assert [s["name"] for s in record["stages"]] == ["load", "text_encoder", "vae_encode", "unet", "vae_decode"]
    assert record["stages"][-1]["completed"] is False


def test_cpu_out_of_memory_is_exit_5_with_the_stage(tmp_path: Path, monkeypatch) -> None:
    real_decode = AutoencoderKL.decode

    def decode(self, *args, **kwargs):
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator refuses: "can't allocate memory"
        return real_decode(self, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "decode", decode)
    path, image = tmp_path / "partial.json", tmp_path / "out.png"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", str(path),
                                 "--save-image", str(image)])
    assert result.exit_code == 5
    assert "error: Out of memory in the VAE decoder stage: " in result.stderr
    assert "note: no image was saved: the run did not complete." in result.stderr
    assert json.loads(path.read_text())["failed_stage"] == "vae_decode"
    assert not image.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["partial.json"]


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory")])
def test_host_memory_errors_are_out_of_memory(error: BaseException) -> None:
    from sdvram.profiler import is_out_of_memory

    assert is_out_of_memory(error)
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_a_json_path_that_cannot_be_written_is_refused_before_the_run(tmp_path: Path) -> None:
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", "/proc/x.json"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: --json: cannot write in /proc (")
    assert "Peak" not in result.stdout  # nothing ran
    missing = tmp_path / "no-such-folder" / "r.json"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", str(missing)])
    assert result.stderr == f"error: --json: {missing.parent} does not exist; create it or give another path for " \
        "the JSON record.\n"


def test_a_write_that_fails_after_the_run_keeps_the_table(tmp_path: Path, monkeypatch) -> None:
    import errno

    from sdvram import outputs

    def full_disk(*args: object) -> None:  # the disk fills while the record is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.os, "fsync", full_disk)
    path = tmp_path / "r.json"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", str(path)])
    assert result.exit_code == 6
    assert result.stdout.startswith("Peak ")  # the table is printed anyway
    assert result.stderr.strip() == f"error: Could not write the JSON record to {path} (No space left on device)."
    assert list(tmp_path.iterdir()) == []


def test_a_failed_image_save_keeps_the_json(tmp_path: Path, monkeypatch) -> None:
    real_save = Image.Image.save

    def broken_save(self, fp, format=None, **params):
        if isinstance(fp, io.BytesIO):  # the format check before the run writes a 1 x 1 image to memory
            return real_save(self, fp, format, **params)
        raise OSError("encoder error -2")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    path, image = tmp_path / "r.json", tmp_path / "out.png"
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *QUICK, "--json", str(path),
                                 "--save-image", str(image)])
    assert result.exit_code == 6
    assert json.loads(path.read_text())["status"] == "completed"
    assert result.stderr.splitlines()[-1] == (
        f"error: Could not write the output image to {image} (encoder error -2). The JSON record was written.")
    assert not image.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "0"], "--steps must be a whole number from 1 to 1000; got 0."),
        (["--strength", "0"], "--strength must be above 0 and at most 1; got 0."),
        (["--steps", "2", "--strength", "0.4"], "--steps 2 at --strength 0.4 leaves no denoising step"),
        (["--batch", "0"], "--batch must be a whole number of images from 1 to 64; got 0."),
        (["--batch", "1.5"], "--batch must be a whole number of images from 1 to 64; got '1.5'."),
        (["--device", "tpu"], "--device must be cuda, cuda:N or cpu; got 'tpu'."),
        (["--seed", "-1"], "--seed must be a whole number from 0 to 18446744073709551615; got -1."),
        (["--seed", str(2**64)], "--seed must be a whole number from 0 to 18446744073709551615"),
        (["--save-image", "out.xbm"], "--save-image: XBM cannot hold an RGB image; use .png, .jpg or .webp."),
        (["--save-image", "out.nope"], "--save-image: Pillow cannot write '.nope' files"),
        (["--model", "x/y"], "--model names weights to load, but --weights is random; drop one of them."),
    ],
)
def test_bad_values_are_refused_before_anything_is_built(args: list[str], message: str, monkeypatch) -> None:
    import sdvram.profiler

    monkeypatch.setattr(sdvram.profiler, "build_pipeline", lambda **kw: pytest.fail("built despite bad input"))
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", *TINY, *args])
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_the_tiny_architecture_refuses_sizes_it_cannot_run() -> None:
    result = runner.invoke(app, ["profile", "--h", "8", "--w", "64", *TINY])
    assert result.exit_code == 2
    assert result.stderr == "error: --h must be a whole number of pixels from 16 to 16384; got 8.\n"


def test_tiny_needs_random_weights() -> None:
    result = runner.invoke(app, ["profile", "--h", "64", "--w", "64", "--device", "cpu", "--architecture", "tiny"])
    assert result.exit_code == 2
    assert "--architecture tiny has no pretrained weights; set --weights to random." in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when there is no CUDA device")
def test_no_cuda_device_exit_3() -> None:
    result = runner.invoke(app, ["profile", str(IMAGES / "balloon--low-res.jpeg")])
    assert result.exit_code == 3
    assert result.stderr.startswith("error: No CUDA device is available")
    assert "set --device to cpu" in result.stderr and "sdvram estimate" in result.stderr


@pytest.mark.parametrize(("missing", "args", "extra"), [
    ("diffusers", ["profile", str(IMAGES / "balloon--low-res.jpeg"), "--device", "cpu"], "profile"),
    # the profile extra as installed before it listed accelerate, which only offload needs
    ("accelerate", ["profile", str(IMAGES / "balloon--low-res.jpeg"), "--offload", "model"], "profile"),
    ("matplotlib", ["sweep", "--sizes", "64", "--png", "x.png"], "plot"),
])
def test_a_missing_extra_is_exit_4(missing: str, args: list[str], extra: str) -> None:
    code = (f"import sys\nsys.modules[{missing!r}] = None  # as if it were not installed\n"
            "from sdvram.cli import main\nsys.argv = ['sdvram', *sys.argv[1:]]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 4
    assert proc.stderr.strip() == (f"error: This command needs the '{extra}' extra ({missing} is not installed); "
                                   f"install it with: pip install 'sdvram[{extra}]'")
