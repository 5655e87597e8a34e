"""The grammar the three commands share, and how failures read: one `error:` line and a documented exit
code for usage errors too, Ctrl-C included; help that reads at 80 columns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdvram.cli import app, optional_values

from .conftest import IMAGES

runner = CliRunner()


@pytest.mark.parametrize(("args", "message"), [
    (["estimate", "--units", "foo", "--h", "8", "--w", "8"], "Invalid value for '--units': 'foo' is not one of"),
    (["estimate", "--nope"], "No such option: --nope"),
    (["simulate", "--dtype", "float8"], "Invalid value for '--dtype'"),
    (["simulate", "--attention", "sometimes"], "Invalid value for '--attention'"),
    (["launch"], "No such command 'launch'"),
    (["fit", "--vram", "0"], "--vram must be from 1 MiB to 1 TiB; got '0'."),
    (["fit", "--vram", "-1"], "--vram must be a size such as 8GB (read as 8 GiB), 12GiB, 8192MiB or 8000MB; got '-1'."),
    (["fit", "--vram", "8XB"], "--vram must be a size such as 8GB (read as 8 GiB), 12GiB, 8192MiB or 8000MB; got "
                               "'8XB'."),
    (["fit", "--aspect", "0:1"], "--aspect must be width:height in whole numbers from 1"),
    (["fit", "--aspect", "abc"], "--aspect must be width:height in whole numbers from 1"),
    (["fit", "--vram", "8GB", "--arch", "sm1"], "--arch must be a CUDA compute capability such as sm86, sm_89 or 8.9"),
    (["fit", "--gpu", "cpu"], "fit needs a GPU to fit"),
    (["simulate", "--h", "64", "--w", "64", "--attention-slicing", "0"],
     "--attention-slicing must be auto, max or a whole number of heads per slice, 1 or more; got '0'."),
    (["simulate", "--offload", "sometimes"], "Invalid value for '--offload': 'sometimes' is not one of"),
    (["profile", "--vae-tiling", "--vae-slicing", "--offload", "model", "--device", "cpu", "--weights", "random",
      "--architecture", "tiny", "--h", "64", "--w", "64"], "--offload moves the models between the CPU and a GPU"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and "╭" not in result.stderr and "Usage:" not in result.stderr


def test_json_flag_without_a_path_means_stdout() -> None:
    assert optional_values(["estimate", "--json"]) == ["estimate", "--json", "-"]
    assert optional_values(["x.jpg", "--json", "--units", "gb"]) == ["x.jpg", "--json", "-", "--units", "gb"]
    assert optional_values(["--json", "out.json"]) == ["--json", "out.json"]
    assert optional_values(["--json", "-"]) == ["--json", "-"]


def test_attention_slicing_without_a_size_means_auto() -> None:
    assert optional_values(["--attention-slicing"]) == ["--attention-slicing", "auto"]
    assert optional_values(["--attention-slicing", "x.jpg"]) == ["--attention-slicing", "auto", "x.jpg"]
    assert optional_values(["--attention-slicing", "--json"]) == ["--attention-slicing", "auto", "--json", "-"]
    assert optional_values(["--attention-slicing", "MAX"]) == ["--attention-slicing", "MAX"]
    assert optional_values(["--attention-slicing", "4"]) == ["--attention-slicing", "4"]
    assert optional_values(["--attention-slicing", "-3"]) == ["--attention-slicing", "-3"]  # refused by the parser


@pytest.mark.parametrize("command", ["estimate", "profile", "simulate", "fit"])
def test_help_reads_at_80_columns(command: str) -> None:
    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run([sys.executable, "-m", "sdvram", command, "--help"], capture_output=True, text=True,
                          env=env, check=True)
    text = proc.stdout
    assert "Usage: " in text and "--json [PATH]" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "<bool>" not in text and "<str>" not in text and "<path>" not in text  # metavars name what is wanted
    assert "--safety-checker / --no-safety-checker" in text


def test_version_reads_package_metadata() -> None:
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"sdvram {version('sdvram')}"


def test_ctrl_c_during_the_heavy_imports_waits_for_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ctrl-C that lands inside an import (torch takes seconds) is held until the import is done, then raised:
    an import cut short left numpy half-initialised and the command died with a RecursionError traceback."""
    from sdvram.extras import import_uninterrupted

    (tmp_path / "interrupted_midway.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGINT)\nfinished = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        import_uninterrupted(("interrupted_midway",))
    assert sys.modules["interrupted_midway"].finished  # the module ran to its end
    assert signal.getsignal(signal.SIGINT) is before  # and Ctrl-C works as before
    del sys.modules["interrupted_midway"]


def test_ctrl_c_is_one_sentence_and_exit_130() -> None:
    pytest.importorskip("diffusers")
    proc = subprocess.Popen([sys.executable, "-m", "sdvram", "profile", "--h", "64", "--w", "64", "--device", "cpu",
                             "--weights", "random", "--architecture", "tiny", "--steps", "1000", "--strength", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Ctrl-C once the command runs (it imports torch only then): inside the imports or the 1,000 UNet calls,
    # whichever it has reached. Before the command starts, Python's own handler would answer.
    maps, deadline = Path(f"/proc/{proc.pid}/maps"), time.monotonic() + 60
    while maps.exists() and "libtorch" not in maps.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1 if maps.exists() else 4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == "error: interrupted; nothing was written"
    assert "Traceback" not in err


def test_simulate_gives_the_answer_first_and_the_default_prompt() -> None:
    pytest.importorskip("diffusers")
    result = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", "--architecture", "tiny", "--gpu", "t4",
                                 "--steps", "2", "--strength", "1"])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Fits t4: needs ") and lines[0].endswith("usable (VAE decoder)")
    assert "Card: NVIDIA Tesla T4 16 GB." in result.stdout
    assert "prompt (the default prompt, 8 tokens): 'a detailed photograph of a landscape'" in result.stdout
    assert "Not modelled" not in result.stdout  # behind --verbose
    verbose = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", "--architecture", "tiny", "--gpu", "t4",
                                  "--steps", "2", "--strength", "1", "--verbose"])
    assert "Not modelled (docs/simulate.md):" in verbose.stdout


def test_simulate_json_to_stdout_is_the_whole_record() -> None:
    pytest.importorskip("diffusers")
    result = runner.invoke(app, ["simulate", str(IMAGES / "balloon--low-res.jpeg"), "--architecture", "tiny",
                                 "--gpu", "t4", "--steps", "2", "--strength", "1", "--json"])
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["kind"] == "simulate" and record["record_version"] == 2
    assert record["simulation"]["gpu"] == "t4" and record["simulation"]["fit"]["verdict"] == "fits"
    assert record["inputs"]["prompt_source"] == "manifest"


@pytest.mark.parametrize(("args", "message"), [
    (["--gpu", "voodoo5"], "Unknown --gpu 'voodoo5'; known: gtx1050ti,"),
    (["--gpu", "rtx 3090x"], "Unknown --gpu 'rtx 3090x'; did you mean rtx3090, rtx3090ti, rtx5090?"),
    (["--gpu", ""], "--gpu is empty; give a card's name such as rtx3060"),
    (["--vram", "8XB"], "--vram must be a size such as 8GB (read as 8 GiB), 12GiB, 8192MiB or 8000MB; got '8XB'."),
    (["--vram", "0"], "--vram must be from 1 MiB to 1 TiB; got '0'."),
    (["--vram", "9" * 400 + "GB"], "--vram must be a size such as 8GB"),
    (["--reserve", "lots"], "--reserve must be a size such as 512MiB, 1GB (read as 1 GiB) or 0; got 'lots'."),
    (["--vram", "8GB", "--arch", "sm1"], "--arch must be a CUDA compute capability"),
    (["--arch", "sm86"], "--arch goes with --vram"),
    (["--gpu", "t4", "--vram", "8GB"], "Give either --gpu or --vram, not both."),
    (["--attention", "flash", "--gpu", "t4", "--architecture", "tiny", "--steps", "2", "--strength", "1"],
     "--attention flash: PyTorch's flash kernel cannot run this pipeline's attention"),
])
def test_simulate_bad_card_and_kernel_choices(args: list[str], message: str) -> None:
    pytest.importorskip("diffusers")
    result = runner.invoke(app, ["simulate", "--h", "64", "--w", "64", *args])
    assert result.exit_code == 2
    assert message in result.stderr and result.stderr.count("\n") == 1


SIMULATE_64 = ["simulate", "--h", "64", "--w", "64", "--architecture", "tiny", "--gpu", "t4", "--steps", "2",
               "--strength", "1", "--json", "-"]
PROFILE = ["profile", str(IMAGES / "balloon--low-res.jpeg")]  # no CUDA device here: exit 3, torch loaded to see


@pytest.mark.parametrize(("args", "code"), [(SIMULATE_64, 0), (PROFILE, 3)])
def test_a_command_that_loaded_torch_ends_without_the_teardown(args: list[str], code: int) -> None:
    """Once torch is loaded the process ends without tearing the interpreter down (cli._end_now): the result is
    whole on standard output, the exit code is the command's, and the atexit handlers ran; a module-level
    object's finalizer, which the teardown would run, did not."""
    pytest.importorskip("diffusers")
    script = (
        "import atexit, sys\n"
        "class Witness:\n    def __del__(self):\n        print('torn down', file=sys.stderr)\n"
        "witness = Witness()\n"
        "atexit.register(lambda: print('atexit ran', file=sys.stderr))\n"
        "from sdvram.cli import main\nsys.argv = ['sdvram', *sys.argv[1:]]\nmain()\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, check=False)
    assert proc.returncode == code, proc.stderr
    assert "atexit ran" in proc.stderr and "torn down" not in proc.stderr
    if code == 0:
        assert json.loads(proc.stdout)["inputs"]["pipeline_width"] == 64
    else:
        assert proc.stderr.startswith("error: No CUDA device is available")


def test_a_command_that_never_loads_torch_exits_as_python_does() -> None:
    """The estimate path leaves SystemExit to Python (its teardown is cheap without torch): the caller of main()
    can go on, as the import test in test_cli_estimate.py does."""
    script = ("import sys\nfrom sdvram.cli import main\nsys.argv = ['sdvram', 'estimate', '--h', '64', '--w', '64']\n"
              "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code, file=sys.stderr)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().splitlines()[-1] == "exit 0"
