"""`sdvram estimate` through typer's CliRunner and through the installed entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdvram.cli import app

from .conftest import IMAGES

runner = CliRunner()

BASE = (859_520_964 + 83_653_863 + 123_060_480) * 2  # docs/facts.md counts x 2 bytes


def run(*args: str):
    return runner.invoke(app, list(args))


def test_table_512() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50")
    assert result.exit_code == 0, result.stderr
    # total = (base + unet) x 1.2 with unet = 64*64*(4470 + 100): 2,581,427,201 bytes = 2.4041 GiB
    first = result.stdout.splitlines()[0]
    assert first == f"Seed formula total: {2_581_427_201 / 1024**3:.4f} GiB (peak activation stage: UNet loop)"
    assert result.stdout.splitlines()[1].startswith("Calibrated: ")
    assert "512 x 512 px (W x H), 50 prompt tokens (given)\ncalibrated for h100 (sm90), float16, switches: none\n" \
        "safety checker not counted" in result.stdout
    assert "UNet loop *" in result.stdout
    assert "x1.2 overhead" in result.stdout
    assert "pads every prompt to 77 tokens" in result.stderr


def test_units_bytes_and_gb() -> None:
    raw = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--units", "bytes")
    assert f"{BASE:,}" in raw.stdout and "bytes" in raw.stdout
    decimal = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--units", "GB")  # any case
    assert f"{2_581_427_201 / 1e9:.4f} GB" in decimal.stdout


def test_json_is_one_document_with_every_figure_in_bytes() -> None:
    result = run("estimate", "--height", "768", "--width", "512", "--tokens", "77", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)  # --json with no path: the document instead of the table
    assert run("estimate", "--height", "768", "--width", "512", "--tokens", "77", "--json", "-").stdout == \
        result.stdout
    latent = 96 * 64
    figures = document["bytes"]
    assert figures["base"] == BASE
    assert figures["unet"] == latent * (4470 + 2 * 77)
    assert figures["vae_encode"] == figures["vae_decode"] == 768 * 512 * 24 + latent * 8
    assert figures["total"] == -(-(BASE + figures["unet"]) * 6 // 5)
    assert document["peak_stage"] == "unet"
    assert document["inputs"]["height"] == 768 and document["inputs"]["tokens"] == 77
    assert document["inputs"]["tokens_source"] == "tokens"


def test_json_to_a_file_keeps_the_table_and_the_usual_permissions(tmp_path: Path) -> None:
    path = tmp_path / "estimate.json"
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--json", str(path))
    assert result.exit_code == 0 and result.stdout.startswith("Seed formula total:")
    assert json.loads(path.read_text())["bytes"]["total"] == 2_581_427_201
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it, not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["estimate.json"]


def test_safety_checker_flag_adds_its_weights() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--safety-checker", "--json")
    assert json.loads(result.stdout)["bytes"]["base"] == BASE + 303_981_588 * 2


def test_image_reads_size_and_manifest_prompt() -> None:
    result = run("estimate", str(IMAGES / "truck--high-res.jpg"), "--json")
    assert result.exit_code == 0, result.stderr
    assert run("estimate", "--image", str(IMAGES / "truck--high-res.jpg"), "--json").stdout == result.stdout
    document = json.loads(result.stdout)
    assert (document["inputs"]["width"], document["inputs"]["height"]) == (1800, 1200)
    assert document["inputs"]["tokens_source"] == "manifest"
    assert 37 <= document["inputs"]["tokens"] <= 43


def test_prompt_counts_tokens() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--prompt", "a photo of a cat", "--json")
    assert json.loads(result.stdout)["inputs"]["tokens"] == 7  # bos + 5 words + eos


def test_long_prompt_is_capped_with_a_note() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--prompt", "cat " * 90)
    assert result.exit_code == 0
    assert "77 prompt tokens" in result.stdout
    assert "The prompt is over 77 tokens; the pipeline truncates it to 77." in result.stderr


def test_no_prompt_counts_the_default_prompt_and_shows_it() -> None:
    result = run("estimate", "--h", "512", "--w", "512")
    assert "8 prompt tokens (the default prompt)" in result.stdout  # bos + 6 words + eos
    assert "prompt: 'a detailed photograph of a landscape'" in result.stdout


def test_non_multiple_of_8_is_noted() -> None:
    result = run("estimate", "--h", "380", "--w", "396", "--tokens", "50")
    assert result.exit_code == 0
    assert "rounds 396 x 380 px (W x H) down to 392 x 376" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--h", "0", "--w", "512"], "--h must be a whole number of pixels from 8 to 16384; got 0."),
        (["--h", "512", "--w", "-64"], "--w must be a whole number of pixels from 8 to 16384; got -64."),
        (["--h", "51.2", "--w", "512"], "--h must be a whole number of pixels from 8 to 16384; got '51.2'."),
        (["--h", "abc", "--w", "512"], "got 'abc'"),
        (["--h", "163840", "--w", "512"], "from 8 to 16384; got 163840."),
        (["--h", "512", "--w", "512", "--tokens", "0"], "--tokens must be a whole number of CLIP tokens from 1 to 77"),
        (["--h", "512", "--w", "512", "--tokens", "78"], "from 1 to 77; got 78."),
        (["--h", "512"], "Give the image size as both --h and --w (pixels), or an IMAGE."),
        ([], "Give the image size as both --h and --w"),
        (["--h", "512", "--w", "512", "--image", "x.jpg"], "Give either IMAGE or both --h and --w, not both."),
        (["a.jpg", "--image", "b.jpg"], "Give the image once: as IMAGE or with --image."),
        (["--h", "512", "--w", "512", "--tokens", "5", "--prompt", "a"], "Give either --tokens or --prompt"),
        (["--h", "512", "--w", "512", "--batch", "0"], "--batch must be a whole number of images from 1 to 64"),
    ],
)
def test_bad_input_is_one_sentence_and_exit_2(args: list[str], message: str) -> None:
    result = run("estimate", *args)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_bad_image_files_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "a.jpg"
    text.write_text("hello")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes((IMAGES / "bench--high-res.jpg").read_bytes()[:5000])
    for path, message in [(tmp_path / "none.jpg", "no such file"), (text, "not an image"), (cut, "truncated")]:
        result = run("estimate", "--image", str(path))
        assert result.exit_code == 2
        assert message in result.stderr
        assert "Traceback" not in result.stderr


def _entry_point() -> list[str]:
    script = shutil.which("sdvram")
    if script is None:
        pytest.fail("the sdvram console script is not installed: run the README's install command")
    return [script]


def test_installed_entry_point_prints_the_table() -> None:
    proc = subprocess.run(
        [*_entry_point(), "estimate", "--h", "512", "--w", "512", "--tokens", "50"],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{2_581_427_201 / 1024**3:.4f} GiB" in proc.stdout


def test_installed_entry_point_bad_input() -> None:
    proc = subprocess.run(
        [*_entry_point(), "estimate", "--h", "-1", "--w", "512"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "error: --h must be a whole number of pixels from 8 to 16384; got -1.\n"


def test_estimate_process_is_light() -> None:
    # -X importtime lists every module the process imports
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "sdvram", "estimate", "--h", "512", "--w",
                           "512", "--tokens", "50"], capture_output=True, text=True, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert not {"torch", "diffusers", "transformers", "PIL.Image"} & imported


def test_python_dash_m_runs_the_same_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sdvram", "estimate", "--h", "64", "--w", "64", "--tokens", "1", "--json"],
        capture_output=True, text=True, check=True,
    )
    assert json.loads(proc.stdout)["bytes"]["unet"] == 8 * 8 * (4470 + 2)


def test_estimate_path_never_imports_torch_diffusers_transformers() -> None:
    code = (
        "import sys\n"
        "from sdvram.cli import main\n"
        "sys.argv = ['sdvram', 'estimate', '--image', sys.argv[1], '--prompt', 'a cat', '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(IMAGES / "balloon--low-res.jpeg")], capture_output=True, text=True,
        check=True,
    )
    assert json.loads(proc.stdout)["inputs"]["width"] == 396
    assert "HEAVY []" in proc.stderr


def test_calibrated_column_in_json_follows_the_simulation_and_the_measured_context() -> None:
    """The calibrated JSON against two independent sources: the simulation of the same settings (every stage's
    peak allocated within 3%, the run's peak reserved within the error the JSON states), and the CUDA context
    the H200 measured (NVML's figure for the process less torch's peak reserved, in a profile record)."""
    pytest.importorskip("diffusers")
    from sdvram.choices import DType
    from sdvram.gpus import GPUS
    from sdvram.requests import RunRequest, Settings
    from sdvram.simulate import SimulateOptions, simulate

    from .conftest import MEASURED

    result = run("estimate", "--h", "1024", "--w", "768", "--tokens", "77", "--gpu", "rtx3060", "--vae-slicing",
                 "--batch", "2", "--json")
    assert result.exit_code == 0, result.stderr
    calibrated = json.loads(result.stdout)["calibrated"]
    figures = calibrated["bytes"]
    assert calibrated["gpu"] == "rtx3060" and calibrated["compute_capability"] == 86
    assert calibrated["switches"] == ["vae_slicing"] and calibrated["dtype"] == "float16"
    record = simulate(RunRequest(height=1024, width=768, dtype=DType.float16,
                                 settings=Settings(batch=2, vae_slicing=True)), SimulateOptions(GPUS["rtx3060"]))
    for stage, peak in figures["stages"].items():
        assert abs(peak - record.stage(stage).peak_allocated) <= 0.03 * record.stage(stage).peak_allocated, stage
    error = calibrated["checked_error"]["reserved"]
    assert abs(figures["peak_reserved"] - record.peak_reserved) <= max(0.03, error) * record.peak_reserved
    measured = json.loads((MEASURED / "profiles" / "512x512.json").read_text())
    context = measured["process_peak"] - measured["peak_reserved"]  # 721,420,288 B on the H200
    assert figures["predicted_nvidia_smi"] - figures["peak_reserved"] == context
    assert calibrated["verdict"] == "fits" and record.simulation.fit.fits


@pytest.mark.parametrize(("args", "says"), [
    (["--vae-tiling", "--offload", "model"], "one switch at a time"),
    (["--gpu", "cpu"], "predicts a CUDA GPU"),
    (["--vram", "8GB", "--arch", "sm100"], "not calibrated for sm100"),
    (["--safety-checker"], "safety checker"),
    (["--dtype", "bfloat16"], "not calibrated for bfloat16"),
])
def test_no_calibrated_answer_says_why_and_keeps_the_formula(args: list[str], says: str) -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", *args)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Seed formula total:")
    assert lines[1].startswith("Calibrated: none: ") and says in " ".join(lines[1:3])


def test_calibrated_verdict_on_a_small_card() -> None:
    # fp16 weights alone are 2.0 GiB: a 6 GB card cannot hold a 2048 x 2048 decode (the simulator needs 12 GiB)
    result = run("estimate", "--h", "2048", "--w", "2048", "--tokens", "50", "--gpu", "rtx2060")
    assert "does not fit rtx2060" in " ".join(result.stdout.split())
    bad = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--dtype", "float64")
    assert bad.exit_code == 2 and "--dtype" in bad.stderr
