"""Nothing lost, round two (issue 17): hostile input, hostile surroundings and special files, each through the CLI.
Every case ends in one sentence and its documented exit code, with no traceback and no temporary file left."""

from __future__ import annotations

import json
import os
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from sdvram.cli import app

from .conftest import IMAGES

runner = CliRunner()
SDVRAM = [sys.executable, "-m", "sdvram"]


def refused(args: list[str], says: str, code: int = 2) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == code, result.output
    assert says in " ".join(result.stderr.split()) and "Traceback" not in result.output


def no_temporaries(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@pytest.fixture
def damaged_pngs(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.png"
    Image.new("RGB", (300, 200), (10, 20, 30)).save(good)
    data = bytearray(good.read_bytes())
    at = data.find(b"IDAT") + 10
    data[at:at + 16] = bytes(b ^ 0x5A for b in data[at:at + 16])  # garbled deflate data, CRC left as it was
    garbled = tmp_path / "garbled.png"
    garbled.write_bytes(bytes(data))
    huge = tmp_path / "huge.png"  # a 16384 x 16384 header, 100 bytes of image data, IEND
    huge.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16384, 16384, 8, 2, 0, 0, 0))
                     + png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b""))
    return {"garbled": garbled, "huge": huge}


# -- 1, 2, 10: values that overflow, and empty values ---------------------------------------------------------
@pytest.mark.parametrize(("args", "says"), [
    (["estimate", "--h", "512", "--w", "512", "--vram", "9" * 400 + "GB"], "--vram must be a size such as 8GB"),
    (["fit", "--vram", "9" * 400 + "GB"], "--vram must be a size such as 8GB"),
    (["sweep", "--sizes", "0:99999999999999999999:1"], "--sizes must be START:STOP:STEP or a comma-separated list"),
    (["estimate", "--h", "512", "--w", "512", "--gpu", ""], "--gpu is empty"),
    (["simulate", "--h", "64", "--w", "64", "--gpu", ""], "--gpu is empty"),
    (["fit", "--aspect", ""], "--aspect must be width:height in whole numbers from 1"),
    (["sweep", "--vram", "8GB", "--gpu", "rtx3060"], "Give either --gpu (as often as wanted) or --vram, not both."),
])
def test_values_that_overflow_or_are_empty_are_refused(args: list[str], says: str) -> None:
    refused(args, says)


# -- 3, 12: what plot is given -----------------------------------------------------------------------------
def test_plot_refuses_a_document_nested_too_deeply(tmp_path: Path) -> None:
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    refused(["plot", str(deep), "--out", str(tmp_path / "d.png")], "is not a JSON document sdvram can read")


def test_plot_refuses_a_sweep_without_rows_and_a_link_loop(tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"rows": [], "gpus": ["h100"], "aspect": [1, 1]}))
    refused(["plot", str(empty), "--out", str(tmp_path / "e.png")], "holds a sweep with no rows")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    refused(["plot", str(loop), "--out", str(tmp_path / "l.png")], "a symbolic link that leads nowhere")
    no_temporaries(tmp_path)


def test_an_image_behind_a_link_loop_is_not_called_missing(tmp_path: Path) -> None:
    loop = tmp_path / "photo.jpg"
    loop.symlink_to(loop)
    refused(["estimate", str(loop)], "a symbolic link that leads nowhere")
    refused(["estimate", str(tmp_path / "absent.jpg")], "no such file")


def test_plot_draws_names_as_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "s.json"
    row = {"gpu": "x", "gpu_name": "$\\foo{$ card", "width": 512, "height": 512, "megapixels": 0.262144,
           "stages": {"load": 2 * 1024**3}, "peak_allocated": 2 * 1024**3, "peak_reserved": 2 * 1024**3,
           "predicted_nvidia_smi": None, "peak_stage": "load", "fits": True, "verdict": "fits",
           "capacity": 3 * 1024**3, "formula_total": None}
    sweep.write_text(json.dumps({"rows": [row], "gpus": ["x"], "aspect": [1, 1], "dtype": "float16", "batch": 1,
                                 "guidance": 5.0, "safety_checker": False, "switches": []}))
    result = runner.invoke(app, ["plot", str(sweep), "--png", str(tmp_path / "s.png")])  # --png, as sweep says
    assert result.exit_code == 0, result.output
    assert "ParseException" not in result.output and (tmp_path / "s.png").stat().st_size > 0


def test_plot_never_writes_beside_a_special_file_nor_over_a_default(tmp_path: Path) -> None:
    refused(["plot", "/dev/stdin"], "is not a regular file, so there is no default place for the plot")
    document = tmp_path / "r.json"
    document.write_text("{}")
    (tmp_path / "r.png").write_text("keep me")
    refused(["plot", str(document)], "the default plot path")
    assert (tmp_path / "r.png").read_text() == "keep me"


# -- 4: standard output on a full disk ---------------------------------------------------------------------
@pytest.mark.parametrize("args", [["estimate", "--h", "512", "--w", "512"],
                                  ["estimate", "--h", "512", "--w", "512", "--json", "-"]])
def test_standard_output_on_a_full_disk_is_exit_6(args: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        proc = subprocess.run([*SDVRAM, *args], stdout=full, stderr=subprocess.PIPE, text=True, check=False)
    assert proc.returncode == 6
    assert proc.stderr == "error: Could not write the result to standard output (No space left on device).\n"


# -- 5: low memory, and sizes read from headers ------------------------------------------------------------
def test_the_host_running_out_is_told_apart_from_the_gpu() -> None:
    from sdvram.extras import host_out_of_memory

    # messages as PyTorch's CPU allocator, the C++ runtime and a fit worker's traceback give them
    assert host_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 B"))
    assert host_out_of_memory(RuntimeError("std::bad_alloc"))
    assert host_out_of_memory(MemoryError())
    # the GPU's: the profile reports it with its stage, never as the host's
    assert not host_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not host_out_of_memory(RuntimeError("CUDA error: out of memory"))


def test_too_little_memory_for_torch_is_one_sentence() -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (800 * 2**20, resource.RLIM_INFINITY))

    proc = subprocess.run([*SDVRAM, "simulate", "--h", "512", "--w", "512"], capture_output=True, text=True,
                          preexec_fn=limit, check=False)
    assert proc.returncode == 5
    assert proc.stderr.startswith("error: This process may use only 800 MiB of memory (ulimit -v, prlimit --as)")
    assert "Traceback" not in proc.stderr


def test_a_large_tiff_is_checked_from_its_structure(tmp_path: Path) -> None:
    """65.6 MP: above the decode limit, its strips are checked against the file instead of decoding 197 MB."""
    big = tmp_path / "big.tiff"
    Image.new("RGB", (8200, 8000), (1, 2, 3)).save(big)
    result = runner.invoke(app, ["estimate", str(big), "--tokens", "5"])
    assert result.exit_code == 0, result.output
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    refused(["estimate", str(cut), "--tokens", "5"], "the image data is damaged or truncated")


# -- 11: damaged PNGs, the same everywhere -----------------------------------------------------------------
@pytest.mark.parametrize("command", ["estimate", "simulate", "fit"])
@pytest.mark.parametrize("which", ["garbled", "huge"])
def test_damaged_pngs_are_refused_by_every_command(command: str, which: str, damaged_pngs: dict) -> None:
    refused([command, str(damaged_pngs[which])], "the image data is damaged or truncated")


# -- 6, 7: outputs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args", [
    ["sweep", "--sizes", "256", "--csv", "{same}.out", "--json", "{same}.out"],
    ["sweep", "--sizes", "256", "--csv", "{same}.png", "--png", "{same}.png"],
    ["profile", "--h", "64", "--w", "64", "--device", "cpu", "--weights", "random", "--architecture", "tiny",
     "--json", "{same}.png", "--save-image", "{same}.png"],
])
def test_one_file_for_two_outputs_is_refused_before_any_work(args: list[str], tmp_path: Path) -> None:
    same = str(tmp_path / "same")
    refused([a.replace("{same}", same) for a in args], "name the same file")
    assert list(tmp_path.iterdir()) == []


def test_csv_to_standard_output() -> None:
    result = runner.invoke(app, ["sweep", "--sizes", "256,512", "--csv", "-"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpu,width,height,megapixels,fits,verdict,") and len(lines) == 3


# -- 8, 9: interrupted, or terminated ----------------------------------------------------------------------
def test_an_interruption_while_drawing_says_what_was_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from sdvram import plots

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(plots, "save", interrupted)
    old = tmp_path / "old.json"
    old.write_text("old")
    csv, png = tmp_path / "s.csv", tmp_path / "s.png"
    result = runner.invoke(app, ["sweep", "--sizes", "256", "--csv", str(csv), "--json", str(old), "--png", str(png)])
    assert result.exit_code == 130
    assert result.stderr.splitlines()[-1] == f"error: interrupted; wrote {csv}, {old}; nothing else was written"
    assert not png.exists() and json.loads(old.read_text())["rows"]
    no_temporaries(tmp_path)


def test_sigterm_is_an_interruption_that_ends_the_workers(tmp_path: Path) -> None:
    out = tmp_path / "fit.json"
    proc = subprocess.Popen([*SDVRAM, "fit", "--gpu", "rtx3060", "--json", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    workers: list[str] = []
    deadline = time.monotonic() + 30
    while not workers and time.monotonic() < deadline:  # the libraries loaded, the search's workers running
        time.sleep(0.2)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert workers
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert stderr.splitlines()[-1] == "error: terminated (SIGTERM); nothing was written"
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert list(tmp_path.iterdir()) == []


# -- security: special files are written to, never replaced ---------------------------------------------------
def test_a_fifo_is_written_to_not_replaced(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = runner.invoke(app, ["estimate", "--h", "512", "--w", "512", "--json", str(fifo)])
    reader.join(timeout=10)
    assert result.exit_code == 0, result.output
    assert json.loads(received[0])["inputs"]["width"] == 512
    assert fifo.is_fifo()
    no_temporaries(tmp_path)


def test_a_link_to_a_file_is_replaced_and_its_target_kept(tmp_path: Path) -> None:
    target = tmp_path / "target.json"
    target.write_text("keep")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    result = runner.invoke(app, ["estimate", "--h", "512", "--w", "512", "--json", str(link)])
    assert result.exit_code == 0, result.output
    assert target.read_text() == "keep" and not link.is_symlink() and json.loads(link.read_text())


def test_a_full_device_is_exit_6_and_stays_a_device() -> None:
    result = runner.invoke(app, ["estimate", "--h", "512", "--w", "512", "--json", "/dev/full"])
    assert result.exit_code == 6
    assert "Could not write the JSON document to /dev/full (No space left on device)." in result.stderr
    assert Path("/dev/full").is_char_device()


# -- rough edges -----------------------------------------------------------------------------------------
def test_a_bad_output_path_is_refused_before_torch_loads() -> None:
    code = ("import sys; from typer.testing import CliRunner; from sdvram.cli import app; "
            "r = CliRunner().invoke(app, ['simulate', '--h', '64', '--w', '64', '--json', '/proc/x.json']); "
            "print(r.exit_code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.split() == ["2", "False"]


def test_simulate_notes_the_rounding_as_estimate_does() -> None:
    result = runner.invoke(app, ["simulate", "--h", "500", "--w", "500", "--architecture", "tiny", "--steps", "2"])
    assert "The pipeline rounds 500 x 500 px (W x H) down to 496 x 496 (multiples of 8)." in " ".join(
        result.stdout.split())


def test_top_level_help_cuts_nothing() -> None:
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([*SDVRAM, "--help"], capture_output=True, text=True, env=env, check=True)
    commands = proc.stdout.split("Commands:")[1].splitlines()
    assert len(commands) > 6 and not [line for line in commands if line.endswith("...")]


def test_the_test_images_still_read(tmp_path: Path) -> None:
    result = runner.invoke(app, ["estimate", str(IMAGES / "bench--high-res.jpg"), "--tokens", "10"])
    assert result.exit_code == 0, result.output
