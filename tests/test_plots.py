"""`sdvram sweep`, timelines and `sdvram plot`: the sweep's rows against simulations run here one by one, the
files it writes, each plot rendered on the CPU and its plotted data read back from the figure's artists
(not its pixels), and the GPU timeline's series from a real H200 allocator trace."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("matplotlib")

from sdvram import plots  # noqa: E402
from sdvram.choices import Architecture, Weights  # noqa: E402
from sdvram.cli import app  # noqa: E402
from sdvram.gpus import GPUS  # noqa: E402
from sdvram.profiler import profile  # noqa: E402
from sdvram.requests import ProfileOptions, RunRequest, Settings  # noqa: E402
from sdvram.simulate import SimulateOptions, Simulator  # noqa: E402
from sdvram.sweep import sweep  # noqa: E402
from sdvram.traces import allocation_series, load_trace  # noqa: E402
from sdvram.units import GIB  # noqa: E402

from .conftest import IMAGES, MEASURED  # noqa: E402

runner = CliRunner()
DATA = Path(__file__).parent / "data"
PNG_PIXELS = (1000, 600)  # plots.SIZE_INCHES at plots.DPI


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sweep")
    paths = {"csv": folder / "s.csv", "json": folder / "s.json", "png": folder / "s.png"}
    result = runner.invoke(app, ["sweep", "--sizes", "256,512", "--aspect", "3:2", "--gpu", "t4", "--gpu", "h100",
                                 "--steps", "10", "--safety-checker", "--csv", str(paths["csv"]),
                                 "--json", str(paths["json"]), "--png", str(paths["png"])])
    assert result.exit_code == 0, result.output
    return paths


def test_sweep_rows_are_the_h200_measurements(tmp_path: Path) -> None:
    """A sweep over sizes the H200 measured (docs/measurements: 512 x 512 and 1024 x 1024, the reference call with
    the safety checker): each row's stages and peaks are the measured bytes."""
    path = tmp_path / "s.json"
    result = runner.invoke(app, ["sweep", "--sizes", "512,1024", "--gpu", "h200", "--safety-checker",
                                 "--json", str(path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(path.read_text())["rows"]
    assert [(r["width"], r["height"]) for r in rows] == [(512, 512), (1024, 1024)]
    for row in rows:
        measured = json.loads((MEASURED / "profiles" / f"{row['width']}x{row['height']}.json").read_text())
        assert row["stages"] == {s["name"]: s["peak_allocated"] for s in measured["stages"]}
        assert (row["peak_allocated"], row["peak_reserved"]) == (measured["peak_allocated"],
                                                                 measured["peak_reserved"])
        assert row["fits"] is True and row["megapixels"] == pytest.approx(row["width"] * row["height"] / 1e6)


def test_sweep_rows_do_not_depend_on_the_workers() -> None:
    """The runs are shared out among worker processes, every n-th to each: put back in order, the rows are those of
    one process running them all (here 3 shares of 6 runs, so each share holds runs of both cards)."""
    request = RunRequest(architecture=Architecture.tiny, prompt="a cat", settings=Settings(steps=4, strength=1.0))
    cards = [GPUS["t4"], GPUS["h100"]]
    alone, shared = (sweep(request, [64, 128, 192], (3, 2), cards, workers=n).to_json() for n in (1, 3))
    assert shared == alone
    assert [(r["gpu"], r["width"]) for r in alone["rows"]] == [(g, w) for g in ("t4", "h100") for w in (64, 128, 192)]


def test_sweep_csv_holds_the_json_rows(swept: dict[str, Path]) -> None:
    document = json.loads(swept["json"].read_text())
    assert [(r["gpu"], r["width"], r["height"]) for r in document["rows"]] == [
        ("t4", 256, 168), ("t4", 512, 336), ("h100", 256, 168), ("h100", 512, 336)]
    rows = list(csv.DictReader(swept["csv"].read_text().splitlines()))
    assert [int(r["peak_allocated"]) for r in rows] == [r["peak_allocated"] for r in document["rows"]]
    assert [int(r["peak_vae_decode"]) for r in rows] == [r["stages"]["vae_decode"] for r in document["rows"]]


def test_sweep_plot_draws_the_rows(swept: dict[str, Path]) -> None:
    with Image.open(swept["png"]) as image:
        assert image.format == "PNG" and image.size == PNG_PIXELS
    document = json.loads(swept["json"].read_text())
    figure = plots.sweep_figure(document)
    lines = {line.get_label(): line for line in figure.axes[0].get_lines()}
    t4 = [r for r in document["rows"] if r["gpu"] == "t4"]
    whole = lines[f"whole run, simulated ({GPUS['t4'].name})"]
    assert list(whole.get_xdata()) == [r["megapixels"] for r in t4]
    assert list(whole.get_ydata()) == [r["peak_allocated"] / GIB for r in t4]
    assert list(lines["seed formula total"].get_ydata()) == [r["formula_total"] / GIB for r in t4]
    assert list(lines["VAE decoder peak"].get_ydata()) == [r["stages"]["vae_decode"] / GIB for r in t4]
    # each card's usable memory: a horizontal line, or, far above the curves (here), named in the title
    title = figure.axes[0].get_title()
    for key in ("t4", "h100"):
        drawn = [line for line in lines.values() if list(line.get_ydata()) == [GPUS[key].capacity / GIB] * 2]
        assert drawn or f"{GPUS[key].name} ({GPUS[key].capacity / GIB:.1f} GiB usable) is above the plot" in title
    near = plots.sweep_figure({**document, "rows": [{**r, "capacity": 4 * GIB} for r in document["rows"]]})
    assert [4.0, 4.0] in [list(line.get_ydata()) for line in near.axes[0].get_lines()]


def test_measured_points_join_a_sweep_with_their_settings() -> None:
    document = {"aspect": [1, 1], "dtype": "float16", "batch": 1, "guidance": 5.0, "safety_checker": True,
                "switches": []}
    sizes = {(p["width"], p["height"]) for p in plots.matching_points(document)}
    assert {(512, 512), (2048, 2048)} <= sizes and (392, 376) not in sizes  # the balloon is not 1:1
    tiled = plots.matching_points({**document, "switches": ["vae_tiling"]})
    # variants.jsonl's tiled runs, as measured
    assert sorted((p["width"], p["peak_allocated"]) for p in tiled) == [(1024, 3458858496), (1536, 4042921984),
                                                                        (2048, 4998141952)]


def test_simulated_timeline_follows_the_run() -> None:
    request = RunRequest(height=512, width=512, settings=Settings(steps=10))
    simulator = Simulator()
    record = simulator.run(request, SimulateOptions(GPUS["t4"], timeline=True, explain=True))
    timeline = record.timeline
    assert max(timeline["allocated"]) == record.peak_allocated == timeline["peak"]["allocated"]
    assert [s["name"] for s in timeline["stages"]] == [s.name for s in record.stages]
    assert all(a["end"] <= b["start"] for a, b in zip(timeline["stages"], timeline["stages"][1:], strict=False))
    assert timeline["peak"]["stage"] == record.peak_stage and timeline["peak"]["alive"]
    # replayed UNet calls take the steps of the call they replay: the same timeline as running every call
    every = simulator.run(request, SimulateOptions(GPUS["t4"], timeline=True, explain=True, replay=False)).timeline
    assert timeline["x"] == every["x"]
    assert all(abs(a - b) <= 2 * 1024**2 for a, b in zip(timeline["allocated"], every["allocated"], strict=True))
    figure = plots.timeline_figure(record.to_json())
    drawn = figure.axes[0].get_lines()[0]
    assert list(drawn.get_ydata()) == [v / GIB for v in timeline["allocated"]]


def test_cpu_profile_timeline_peaks_at_the_record_s_peak(tmp_path: Path) -> None:
    record = profile(RunRequest(height=64, width=96, prompt="a cat", architecture=Architecture.tiny,
                                settings=Settings(steps=10)),
                     ProfileOptions(device="cpu", weights=Weights.random, timeline=True)).record
    assert max(record.timeline["allocated"]) == record.peak_allocated


def test_timeline_and_plot_commands_write_files(tmp_path: Path) -> None:
    record_path, picture = tmp_path / "r.json", tmp_path / "t.svg"
    result = runner.invoke(app, ["simulate", "--h", "256", "--w", "256", "--gpu", "t4", "--steps", "10",
                                 "--timeline", str(picture), "--json", str(record_path)])
    assert result.exit_code == 0, result.output
    assert picture.read_text().lstrip().startswith("<?xml") and "<svg" in picture.read_text()
    again = tmp_path / "again.png"
    result = runner.invoke(app, ["plot", str(record_path), "--out", str(again)])
    assert result.exit_code == 0 and result.stderr.strip() == f"wrote {again}"
    with Image.open(again) as image:
        assert image.size == PNG_PIXELS


@pytest.mark.parametrize(("args", "message"), [
    (["plot", "missing.json"], "error: FILE 'missing.json': no such file."),
    (["plot", str(IMAGES / "prompts.toml")], "is not a JSON document"),
    (["sweep", "--sizes", "500"], "--sizes must be multiples of 8 pixels"),
    (["sweep", "--sizes", "0:512:8"], "--sizes must be START:STOP:STEP or a comma-separated list"),
    (["sweep", "--png", "out.pdf"], "--png must end in .png or .svg; got '.pdf'."),
    (["simulate", "--h", "64", "--w", "64", "--timeline", "t.jpg"], "--timeline must end in .png or .svg"),
])
def test_bad_plot_input_is_one_sentence(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and message in result.stderr and result.stderr.count("\n") == 1


def test_a_json_that_is_no_result_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text('{"a": 1}')
    result = runner.invoke(app, ["plot", str(path)])
    assert result.exit_code == 2 and "holds neither a sweep" in result.stderr


def test_gpu_timeline_series_from_a_real_trace() -> None:
    """On a GPU, profile --timeline takes the allocator's own trace; its series, replayed through the model,
    reaches the peak that torch.cuda.memory_stats() recorded on the H200."""
    data = load_trace(DATA / "trace-512-steps10.pkl.gz")
    series = allocation_series(data["device_traces"][0])
    assert len(series) == len(data["device_traces"][0])
    measured = json.loads((MEASURED / "profiles" / "512x512-steps10-traced.json").read_text())  # the same run
    assert max(a for a, _ in series) == measured["peak_allocated"]
    assert max(r for _, r in series) == measured["peak_reserved"] == data["stats"]["reserved_bytes.all.peak"]

