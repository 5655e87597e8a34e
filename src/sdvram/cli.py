"""The ``sdvram`` command line: parses arguments, calls one library function, renders the result."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from sdvram.errors import SdvramError
from sdvram.units import Units

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
        from importlib.metadata import version

        out.print(f"sdvram {version('sdvram')}", highlight=False)
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
        typer.Option("--tokens", metavar="N", help="CLIP prompt tokens, 1 to 77 (default 77, what the pipeline pads to)."),
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
    json_: Annotated[bool, typer.Option("--json", help="Print one JSON document (bytes) instead of the table.")] = False,
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
