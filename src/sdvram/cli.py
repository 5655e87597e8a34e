"""The ``sdvram`` command line: parses arguments, calls one library function, renders the result."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from sdvram.architecture import DEFAULT_MODEL
from sdvram.errors import OutOfMemoryError, SdvramError
from sdvram.gpus import DEFAULT_GPU, GPUS
from sdvram.units import Units


class DType(str, Enum):
    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"


class Weights(str, Enum):
    pretrained = "pretrained"
    random = "random"


class Architecture(str, Enum):
    sd15 = "sd15"
    tiny = "tiny"


class Attention(str, Enum):
    auto = "auto"
    flash = "flash"
    efficient = "efficient"
    math = "math"


app = typer.Typer(
    help="How much GPU memory Stable Diffusion v1.5 img2img needs, and why.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)  # one sentence stays one line


def fail(error: SdvramError) -> NoReturn:
    """One sentence on stderr and the error's documented exit code."""
    err.print(f"error: {error}", markup=False, highlight=False)
    raise typer.Exit(error.exit_code)


def _version(value: bool) -> None:
    if value:
        import sdvram

        out.print(f"sdvram {sdvram.__version__}", highlight=False)  # package metadata; "0+unknown" uninstalled
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """How much GPU memory Stable Diffusion v1.5 img2img needs, and why."""


UnitsOption = Annotated[Units, typer.Option("--units", help="Units of the table: gib (1024^3), gb (10^9), bytes.")]


@app.command()
def estimate(
    height: Annotated[
        str | None, typer.Option("--h", "--height", metavar="PIXELS", help="Image height in pixels.")
    ] = None,
    width: Annotated[
        str | None, typer.Option("--w", "--width", metavar="PIXELS", help="Image width in pixels.")
    ] = None,
    image: Annotated[
        Path | None, typer.Option("--image", help="Read the size from this image (EXIF orientation applied).")
    ] = None,
    tokens: Annotated[
        str | None,
        typer.Option(
            "--tokens", metavar="N", help="CLIP prompt tokens, 1 to 77 (default 77, what the pipeline pads to)."
        ),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option("--prompt", help="Count the tokens of this prompt as the pipeline does.")
    ] = None,
    batch: Annotated[str, typer.Option("--batch", metavar="N", help="Images per call (multiplies activations).")] = "1",
    safety_checker: Annotated[
        bool,
        typer.Option(
            "--safety-checker/--no-safety-checker",
            help="Count the safety checker's weights in the base (the seed formula leaves them out).",
        ),
    ] = False,
    units: UnitsOption = Units.gib,
    json_: Annotated[
        bool, typer.Option("--json", help="Print one JSON document (bytes) instead of the table.")
    ] = False,
) -> None:
    """Evaluate the seed formula, stage by stage, in pure Python (no GPU, no torch)."""
    from sdvram.estimate import estimate as run_estimate
    from sdvram.report import estimate_document, estimate_table, to_json

    try:
        result = run_estimate(
            height, width, tokens, image=image, prompt=prompt, batch=batch, safety_checker=safety_checker
        )
    except SdvramError as error:
        fail(error)
    if json_:
        print(to_json(estimate_document(result)))
        return
    out.print(estimate_table(result, units))
    for note in result.notes:
        err.print(f"note: {note}", markup=False, highlight=False)


ImageArg = Annotated[Path | None, typer.Argument(help="Input image (or give --h and --w).", show_default=False)]
HeightOpt = Annotated[
    str | None, typer.Option("--h", "--height", metavar="PIXELS", help="Height of a generated input image.")
]
WidthOpt = Annotated[
    str | None, typer.Option("--w", "--width", metavar="PIXELS", help="Width of a generated input image.")
]
PromptOpt = Annotated[str | None, typer.Option("--prompt", help="Prompt (default: the image's manifest prompt).")]
DTypeOpt = Annotated[
    DType | None,
    typer.Option("--dtype", help="Weights and activations (default float16 on a GPU, float32 on the CPU)."),
]
ArchitectureOpt = Annotated[
    Architecture,
    typer.Option("--architecture", help="sd15, or tiny: a miniature for testing on a CPU (random weights only)."),
]
StepsOpt = Annotated[int, typer.Option("--steps", help="num_inference_steps (the loop runs steps x strength of them).")]
StrengthOpt = Annotated[float, typer.Option("--strength", help="img2img strength.")]
GuidanceOpt = Annotated[float, typer.Option("--guidance", help="guidance_scale; above 1 doubles the UNet batch.")]
BatchOpt = Annotated[int, typer.Option("--batch", help="num_images_per_prompt.")]
SafetyOpt = Annotated[
    bool, typer.Option("--safety-checker/--no-safety-checker", help="Run the safety checker, as the pipeline ships.")
]
JsonPathOpt = Annotated[Path | None, typer.Option("--json", help="Write the whole record to this file (atomically).")]


@app.command()
def profile(
    image: ImageArg = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    prompt: PromptOpt = None,
    device: Annotated[
        str, typer.Option("--device", help="cuda, cuda:N, or cpu (the same instrumented pipeline).")
    ] = "cuda",
    dtype: DTypeOpt = None,
    weights: Annotated[
        Weights,
        typer.Option(
            "--weights",
            help="pretrained: load --model; random: build the architecture from the shipped configs "
            "(same memory, no download).",
        ),
    ] = Weights.pretrained,
    model: Annotated[
        str, typer.Option("--model", help="Hub id or local folder for --weights pretrained.")
    ] = DEFAULT_MODEL,
    architecture: ArchitectureOpt = Architecture.sd15,
    steps: StepsOpt = 50,
    strength: StrengthOpt = 0.8,
    guidance: GuidanceOpt = 5.0,
    batch: BatchOpt = 1,
    seed: Annotated[int, typer.Option("--seed", help="Random seed of the generator.")] = 0,
    safety_checker: SafetyOpt = True,
    json_path: JsonPathOpt = None,
    save_image: Annotated[
        Path | None, typer.Option("--save-image", help="Keep the pipeline's output image here.")
    ] = None,
    units: UnitsOption = Units.gib,
) -> None:
    """Run the real SD v1.5 img2img pipeline and record the peak memory of every stage beside the formula
    (and, on a GPU, beside the simulation of the same settings)."""
    from sdvram.extras import require_profile_extra

    try:
        require_profile_extra()
        _check_outputs(json_path, save_image)
        from sdvram.profiler import oom_message
        from sdvram.profiler import profile as run_profile

        request = _request(
            image, height, width, prompt, dtype, architecture, steps, strength, guidance, batch, safety_checker,
            device=device, weights=weights.value, model=model, seed=seed, save_image=save_image,
        )
        if device == "cpu" and architecture is Architecture.sd15:
            err.print("note: SD v1.5 on a CPU takes a long time (each of the 41 UNet calls runs for seconds); "
                      "--architecture tiny --weights random checks the same pipeline in seconds.", markup=False)
        with unet_progress() as progress:
            record = run_profile(request, progress)
        _finish(record, json_path, units)
        if record.status == "out_of_memory":
            raise OutOfMemoryError(oom_message(record))
    except SdvramError as error:
        fail(error)


@app.command()
def simulate(
    image: ImageArg = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    prompt: PromptOpt = None,
    gpu: Annotated[
        str,
        typer.Option(
            "--gpu", help=f"The GPU to predict: {', '.join(GPUS)}; or cpu (what profile --device cpu measures)."
        ),
    ] = DEFAULT_GPU,
    dtype: DTypeOpt = None,
    architecture: ArchitectureOpt = Architecture.sd15,
    steps: StepsOpt = 50,
    strength: StrengthOpt = 0.8,
    guidance: GuidanceOpt = 5.0,
    batch: BatchOpt = 1,
    safety_checker: SafetyOpt = True,
    attention: Annotated[
        Attention,
        typer.Option(
            "--attention",
            help="auto: the kernel PyTorch picks for the GPU; or allow only flash, efficient or math "
            "(as torch.nn.attention.sdpa_kernel would).",
        ),
    ] = Attention.auto,
    explain: Annotated[
        bool,
        typer.Option("--explain", help="List the live tensors at each peak, grouped by the module that made them."),
    ] = False,
    json_path: JsonPathOpt = None,
    units: UnitsOption = Units.gib,
) -> None:
    """Predict a GPU's per-stage peak memory without a GPU: the real pipeline on the meta device."""
    from sdvram.extras import require_profile_extra

    try:
        require_profile_extra()
        from sdvram.gpus import find_gpu
        from sdvram.simulate import SimulateOptions
        from sdvram.simulate import simulate as run_simulate

        target = find_gpu(gpu)
        _check_outputs(json_path, None)
        request = _request(
            image, height, width, prompt, dtype, architecture, steps, strength, guidance, batch, safety_checker,
            device="meta", weights="random",
        )
        options = SimulateOptions(target, attention.value, explain)
        with unet_progress() as progress:
            record = run_simulate(request, options, progress)
        _finish(record, json_path, units)
    except SdvramError as error:
        fail(error)


def _check_outputs(json_path: Path | None, image_path: Path | None) -> None:
    from sdvram.record import check_output_path

    if json_path is not None:
        check_output_path(json_path, "JSON record")
    if image_path is not None:
        check_output_path(image_path, "output image")


def _request(
    image: Path | None,
    height: str | None,
    width: str | None,
    prompt: str | None,
    dtype: DType | None,
    architecture: Architecture,
    steps: int,
    strength: float,
    guidance: float,
    batch: int,
    safety_checker: bool,
    **rest: Any,
) -> Any:
    """The ProfileRequest both commands build from their shared options."""
    from sdvram.pipeline import RunSettings
    from sdvram.profiler import ProfileRequest

    settings = RunSettings(
        steps=steps,
        strength=strength,
        guidance=guidance,
        batch=batch,
        seed=rest.pop("seed", 0),
        safety_checker=safety_checker,
    )
    return ProfileRequest(
        image=image,
        height=height,
        width=width,
        prompt=prompt,
        dtype=dtype.value if dtype else None,
        architecture=architecture.value,
        settings=settings,
        **rest,
    )


def _finish(record: Any, json_path: Path | None, units: Units) -> None:
    """Write the record (whole or not at all) and print its tables."""
    from sdvram.record import write_json_atomic
    from sdvram.report import explain_tables, record_table, simulation_notes

    if json_path is not None:
        write_json_atomic(json_path, record.to_json())
        err.print(f"wrote {json_path}", markup=False, highlight=False)
    out.print(record_table(record, units))
    if record.kind == "simulate":
        out.print(simulation_notes(record, units))
        if "explain" in record.extra:
            out.print(explain_tables(record, units))


@contextmanager
def unet_progress() -> Iterator[Callable[[int, int], None]]:
    """A progress bar over the UNet calls, on stderr, shown from the first call on (so an error before the
    loop prints nothing but its sentence)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("denoising (UNet calls)"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    task = bar.add_task("unet", total=None)

    def advance(done: int, total: int) -> None:
        if not err.is_terminal:  # logs and pipes get the result, not a redrawn bar
            return
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if bar.live.is_started:
            bar.stop()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
