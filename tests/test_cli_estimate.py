"""`sdvram estimate` through typer's CliRunner and through the installed entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdvram.cli import app

from .conftest import IMAGES

runner = CliRunner()

BASE = (859_520_964 + 83_653_863 + 123_060_480) * 2  # shared/FACTS.md counts x 2 bytes


def run(*args: str):
    return runner.invoke(app, list(args))


def test_table_512() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50")
    assert result.exit_code == 0, result.stderr
    assert "512x512 px, 50 tokens" in result.stdout
    # total = (base + unet) x 1.2 with unet = 64*64*(4470 + 100): 2,581,427,201 bytes = 2.4041 GiB
    assert f"{2_581_427_201 / 1024**3:.4f} GiB" in result.stdout
    assert "UNet *" in result.stdout
    assert "x1.2 overhead" in result.stdout
    assert "pads every prompt to 77 tokens" in result.stderr


def test_units_bytes_and_gb() -> None:
    raw = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--units", "bytes")
    assert f"{BASE:,} B" in raw.stdout
    decimal = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--units", "gb")
    assert f"{2_581_427_201 / 1e9:.4f} GB" in decimal.stdout


def test_json_is_one_document_with_every_figure_in_bytes() -> None:
    result = run("estimate", "--height", "768", "--width", "512", "--tokens", "77", "--json")
    assert result.exit_code == 0
    document = json.loads(result.stdout)
    latent = 96 * 64
    figures = document["bytes"]
    assert figures["base"] == BASE
    assert figures["unet"] == latent * (4470 + 2 * 77)
    assert figures["vae_encode"] == figures["vae_decode"] == 768 * 512 * 24 + latent * 8
    assert figures["total"] == -(-(BASE + figures["unet"]) * 6 // 5)
    assert document["peak_stage"] == "unet"
    assert document["inputs"]["height"] == 768 and document["inputs"]["tokens"] == 77


def test_safety_checker_flag_adds_its_weights() -> None:
    result = run("estimate", "--h", "512", "--w", "512", "--tokens", "50", "--safety-checker", "--json")
    assert json.loads(result.stdout)["bytes"]["base"] == BASE + 303_981_588 * 2


def test_image_reads_size_and_manifest_prompt() -> None:
    result = run("estimate", "--image", str(IMAGES / "truck--high-res.jpg"), "--json")
    assert result.exit_code == 0, result.stderr
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
    assert "77 tokens" in result.stdout
    assert "The prompt is 92 tokens; the pipeline truncates it to 77." in result.stderr


def test_non_multiple_of_8_is_noted() -> None:
    result = run("estimate", "--h", "380", "--w", "396", "--tokens", "50")
    assert result.exit_code == 0
    assert "rounds 396x380 down to 392x376" in result.stderr


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
        (["--h", "512"], "Give the image size as both --h and --w"),
        ([], "Give the image size as both --h and --w"),
        (["--h", "512", "--w", "512", "--image", "x.jpg"], "Give either --image or both --h and --w, not both."),
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


def test_version_reads_package_metadata() -> None:
    from importlib.metadata import version

    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sdvram {version('sdvram')}"


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
