"""The ``sdvram`` command line: parses arguments into typed requests, calls one library function, renders
the result, maps failures to exit codes. No decisions beyond those.

The library names parameters (``height``); ``FLAGS`` spells them as this interface's flags in messages.
"""


import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup

from sdvram.choices import Architecture, DType, Kernel, Offload, Units, Weights
from sdvram.errors import HostOutOfMemory, Interrupted, OutOfMemoryError, SdvramError, Terminated, WriteError
from sdvram.extras import TERMINATED
from sdvram.gpus import DEFAULT_GPU, GPUS
from sdvram.pipelines import DEFAULT as DEFAULT_PIPELINE
from sdvram.pipelines import find_family

FLAGS = {
    "image": "IMAGE", "height": "--h", "width": "--w", "tokens": "--tokens", "prompt": "--prompt", "batch": "--batch",
    "steps": "--steps", "strength": "--strength", "guidance": "--guidance", "seed": "--seed", "dtype": "--dtype",
    "architecture": "--architecture", "device": "--device", "weights": "--weights", "model": "--model",
    "gpu": "--gpu", "vram": "--vram", "arch": "--arch", "attention": "--attention", "json": "--json",
    "save_image": "--save-image", "units": "--units", "vae_tiling": "--vae-tiling", "vae_slicing": "--vae-slicing",
    "attention_slicing": "--attention-slicing", "offload": "--offload", "aspect": "--aspect", "sizes": "--sizes",
    "csv": "--csv", "png": "--png", "timeline": "--timeline", "out": "--out", "file": "FILE",
    "pipeline": "--pipeline", "mask": "--mask", "vae": "--vae", "safety_checker": "--safety-checker",
    "reserve": "--reserve",
}
ATTENTION_SLICING = "--attention-slicing"
SLICE_SIZES = ("auto", "max")
JSON = "--json"
STDOUT = "-"

out = Console(soft_wrap=False)
err = Console(stderr=True, soft_wrap=True)  # one sentence stays one line


def say(text: str) -> None:
    """One line on stderr, as typed (no markup, no highlighting)."""
    err.print(text, markup=False, highlight=False)


class SdvramGroup(TyperGroup):
    """Runs commands without click's standalone handling, so that every failure is one ``error:`` line:
    usage errors (exit 2) as well as sdvram's own, and Ctrl-C (exit 130)."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError

        argv = optional_values(list(sys.argv[1:] if args is None else args))
        WRITTEN.clear()
        TERMINATED.clear()
        previous = _on_sigterm()
        try:
            code = super().main(argv, prog_name, complete_var, False, windows_expand_args, **extra)
            _flush_stdout()
        except NoArgsIsHelpError as exc:
            say(exc.ctx.get_help() if exc.ctx else str(exc))
            sys.exit(0)
        except ClickException as exc:
            say(f"error: {exc.format_message()}")
            sys.exit(exc.exit_code)
        except (typer.Abort, KeyboardInterrupt):  # click turns both Ctrl-C and SIGTERM (Terminated) into Abort
            code = Interrupted.exit_code
        except OSError as exc:  # standard output could not take the result: a full disk, a closed pipe
            code = _stdout_failed(exc)
        except MemoryError:
            code = _host_out_of_memory()
        except RuntimeError as exc:  # std::bad_alloc, the CPU allocator, a fit worker that died of it
            from sdvram.extras import host_out_of_memory

            if not host_out_of_memory(exc):
                raise
            code = _host_out_of_memory()
        finally:
            _restore_sigterm(previous)
        if code == Interrupted.exit_code and TERMINATED:
            code = 143
        if code in (Interrupted.exit_code, 143):  # typer turns Ctrl-C into 130
            say(f"error: {Interrupted(list(WRITTEN), 'interrupted' if code == 130 else 'terminated (SIGTERM)')}")
        sys.exit(code if isinstance(code, int) else 0)


WRITTEN: list[str] = []  # the outputs written so far by this command, for the sentence of an interruption


def _on_sigterm() -> Any:
    """SIGTERM raises Terminated where the program is (as Ctrl-C raises KeyboardInterrupt): the same clean-up runs
    (temporary files removed, workers ended) and the exit is 143."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def terminate(signum: int, frame: Any) -> None:
        TERMINATED.append(signum)
        raise Terminated()

    return signal.signal(signal.SIGTERM, terminate)


def _restore_sigterm(previous: Any) -> None:
    if previous is not None:
        import signal

        signal.signal(signal.SIGTERM, previous)


def _flush_stdout() -> None:
    """Flush what was printed while the error can still be reported (a full disk shows only at the flush)."""
    sys.stdout.flush()


def _stdout_failed(exc: OSError) -> int:
    """The output could not be written to standard output: one sentence, exit 6; standard output is then pointed
    at /dev/null so that Python's own flush at exit does not fail again with a traceback."""
    import os

    reason = exc.strerror or str(exc)
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    say(f"error: Could not write the result to standard output ({reason}).")
    return WriteError.exit_code


def _host_out_of_memory() -> int:
    say(f"error: {HostOutOfMemory.RAN_OUT}")
    return HostOutOfMemory.exit_code


def optional_values(argv: list[str]) -> list[str]:
    """The options whose value may be left out get their default: ``--json`` with no value (last, or followed
    by another option) means stdout, ``-``; ``--attention-slicing`` not followed by auto, max or a number
    means ``auto``."""
    fixed: list[str] = []
    for i, arg in enumerate(argv):
        fixed.append(arg)
        following = argv[i + 1] if i + 1 < len(argv) else None
        if arg == JSON and (following is None or (following.startswith("-") and following != STDOUT)):
            fixed.append(STDOUT)
        if arg == ATTENTION_SLICING and (following is None or not (following.lower() in SLICE_SIZES
                                                                   or following.lstrip("-").isdigit())):
            fixed.append("auto")
    return fixed


app = typer.Typer(
    cls=SdvramGroup,
    help="How much GPU memory Stable Diffusion needs (SD 1.5, 2.1 and SDXL pipelines), and why.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"max_content_width": 100},
)


def fail(error: SdvramError) -> NoReturn:
    """One sentence on stderr, parameters spelled as flags, and the error's documented exit code."""
    say(f"error: {error.render(FLAGS)}")
    raise typer.Exit(error.exit_code)


@contextmanager
def failures() -> Iterator[None]:
    """Turn sdvram's errors into their sentence and exit code; the host running out of memory (an import, a
    decode, a simulation, a search's worker) into exit 5."""
    try:
        yield
    except SdvramError as error:
        fail(error)
    except (MemoryError, RuntimeError) as exc:
        from sdvram.extras import host_out_of_memory

        if not host_out_of_memory(exc):
            raise
        fail(HostOutOfMemory(HostOutOfMemory.RAN_OUT))


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
    """How much GPU memory Stable Diffusion needs (SD 1.5, 2.1 and SDXL pipelines), and why."""


# -- the options the commands share ------------------------------------------------------------------------
ImageArg = Annotated[Path | None, typer.Argument(metavar="[IMAGE]", help="Input image; or give --h and --w.",
                                                 show_default=False)]
ImageOpt = Annotated[Path | None, typer.Option("--image", metavar="PATH", help="The input image (same as IMAGE).")]
HeightOpt = Annotated[str | None, typer.Option("--h", "--height", metavar="PIXELS", help="Image height in pixels.")]
WidthOpt = Annotated[str | None, typer.Option("--w", "--width", metavar="PIXELS", help="Image width in pixels.")]
PromptOpt = Annotated[str | None, typer.Option(
    "--prompt", metavar="TEXT",
    help="The prompt (default: the image's prompt in prompts.toml beside it, else a default prompt, shown).")]
BatchOpt = Annotated[str, typer.Option("--batch", metavar="N", help="Images per call (num_images_per_prompt).")]
SafetyOpt = Annotated[bool, typer.Option(
    "--safety-checker/--no-safety-checker",
    help="Count (and run) the safety checker, as from_pretrained loads it; the seed formula leaves it out.")]
UnitsOpt = Annotated[Units, typer.Option("--units", case_sensitive=False,
                                         help="Units: gib (1024^3), gb (10^9) or bytes.")]
JsonOpt = Annotated[str | None, typer.Option(
    "--json", metavar="[PATH]",
    help="Write the result as JSON to PATH, whole or not at all; '-' or no PATH prints it instead of the table.")]
DTypeOpt = Annotated[DType | None, typer.Option(
    "--dtype", case_sensitive=False, help="Weights and activations (default float16 on a GPU, float32 on the CPU).")]
ArchitectureOpt = Annotated[Architecture, typer.Option(
    "--architecture", case_sensitive=False,
    help="full: the pipeline's published configs; tiny: a miniature with its classes for testing on a CPU "
         "(random weights only).")]
PipelineOpt = Annotated[str, typer.Option(
    "--pipeline", metavar="NAME",
    help="sd15-img2img, sd15-txt2img, sd15-inpaint, sd21-txt2img, sdxl-txt2img or sdxl-img2img.")]
MaskOpt = Annotated[Path | None, typer.Option(
    "--mask", metavar="PATH", help="sd15-inpaint's mask image [default: the whole image masked].")]
VaeOpt = Annotated[str | None, typer.Option(
    "--vae", metavar="NAME", help="Another VAE of the pipeline: fp16-fix (SDXL's without the float32 upcast).")]
VaeTilingOpt = Annotated[bool, typer.Option(
    "--vae-tiling", help="pipe.vae.enable_tiling(): the VAE encodes and decodes 512-pixel tiles, one at a time.")]
VaeSlicingOpt = Annotated[bool, typer.Option(
    "--vae-slicing", help="pipe.vae.enable_slicing(): the VAE takes the images of a batch one at a time.")]
AttentionSlicingOpt = Annotated[str | None, typer.Option(
    "--attention-slicing", metavar="[auto|max|N]",
    help="pipe.enable_attention_slicing(): attention in slices of heads; alone it means auto (half the heads).")]
OffloadOpt = Annotated[Offload, typer.Option(
    "--offload", case_sensitive=False,
    help="model: pipe.enable_model_cpu_offload() (one model on the GPU at a time); sequential: "
         "enable_sequential_cpu_offload() (one layer's weights at a time; slow). Needs accelerate.")]
VramOpt = Annotated[str | None, typer.Option(
    "--vram", metavar="SIZE", help="A card not in the table: its memory, e.g. 8GB or 12GiB (with --arch).")]
ArchOpt = Annotated[str | None, typer.Option(
    "--arch", metavar="smXY", help="With --vram: the card's compute capability, e.g. sm86, sm_89 or 8.9 "
    "[default: sm86].")]
ReserveOpt = Annotated[str | None, typer.Option(
    "--reserve", metavar="SIZE", help="Memory other processes hold on the card (nvidia-smi lists them) "
    "[default: 512MiB on a desktop or laptop card (a desktop session), 0 on a data-centre card].")]
TimelineOpt = Annotated[Path | None, typer.Option(
    "--timeline", metavar="PATH",
    help="Plot memory over the run with its stages (.png or .svg; needs the plot extra); the JSON keeps it.")]
StepsOpt = Annotated[str | None, typer.Option(
    "--steps", metavar="N", help="num_inference_steps (from an image the loop runs steps x strength of them) "
    "[default: the pipeline's, 50].")]
StrengthOpt = Annotated[str | None, typer.Option(
    "--strength", metavar="X", help="From an image: strength, above 0 to 1 [default: the pipeline's: 0.8 for "
    "sd15-img2img, 1 for inpainting, 0.3 for sdxl-img2img].")]
GuidanceOpt = Annotated[str | None, typer.Option(
    "--guidance", metavar="X", help="guidance_scale; above 1 doubles the UNet's batch [default: the pipeline's: 5 "
    "for sd15-img2img and SDXL, else 7.5].")]


def _image(image: Path | None, image_opt: Path | None) -> Path | None:
    if image is not None and image_opt is not None and image != image_opt:
        from sdvram.errors import InputError

        raise InputError("Give the image once: as IMAGE or with --image.")
    return image if image is not None else image_opt


def _size(value: str | None, param: str, low: int | None = None) -> int | None:
    from sdvram.inputs import MIN_SIDE, parse_side

    return None if value is None else parse_side(value, param, MIN_SIDE if low is None else low)


def _settings(pipeline: str, steps: str | None, strength: str | None, guidance: str | None, batch: str, seed: str,
              safety_checker: bool, vae_tiling: bool = False, vae_slicing: bool = False,
              attention_slicing: str | None = None, offload: Offload = Offload.none) -> Any:
    """The pipeline's settings: what was given, parsed, and the family's defaults for the rest."""
    from sdvram.inputs import (
        parse_attention_slicing,
        parse_batch,
        parse_guidance,
        parse_seed,
        parse_steps,
        parse_strength,
    )
    from sdvram.requests import settings_for

    return settings_for(find_family(pipeline), steps=None if steps is None else parse_steps(steps),
                        strength=None if strength is None else parse_strength(strength),
                        guidance=None if guidance is None else parse_guidance(guidance),
                        batch=parse_batch(batch), seed=parse_seed(seed), safety_checker=safety_checker,
                        vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                        attention_slicing=parse_attention_slicing(attention_slicing), offload=offload)


def _run_request(image: Path | None, height: str | None, width: str | None, prompt: str | None,
                 dtype: DType | None, architecture: Architecture, settings: Any, pipeline: str,
                 mask: Path | None = None, vae: str | None = None) -> Any:
    from sdvram.architecture import MIN_SIDE
    from sdvram.requests import RunRequest

    low = MIN_SIDE[architecture.value]
    return RunRequest(image=image, height=_size(height, "height", low), width=_size(width, "width", low),
                      prompt=prompt, dtype=dtype, architecture=architecture, settings=settings,
                      pipeline=find_family(pipeline).name, mask=mask, vae=vae)


@app.command(short_help="The seed formula and the calibrated answer, instantly (no torch).")
def estimate(
    image: ImageArg = None,
    image_opt: ImageOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    tokens: Annotated[str | None, typer.Option(
        "--tokens", metavar="N", help="CLIP prompt tokens, 1 to 77, start and end included.")] = None,
    prompt: PromptOpt = None,
    batch: Annotated[str, typer.Option("--batch", metavar="N", help="Images per call (multiplies activations).")] = "1",
    safety_checker: SafetyOpt = False,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", metavar="NAME", help=f"The card of the calibrated column: {', '.join(GPUS)} [default: {DEFAULT_GPU}].")
    ] = None,
    vram: VramOpt = None,
    arch: ArchOpt = None,
    reserve: ReserveOpt = None,
    dtype: Annotated[DType, typer.Option("--dtype", case_sensitive=False,
                                         help="The calibrated column's dtype.")] = DType.float16,
    vae_tiling: VaeTilingOpt = False,
    vae_slicing: VaeSlicingOpt = False,
    attention_slicing: AttentionSlicingOpt = None,
    offload: OffloadOpt = Offload.none,
    pipeline: PipelineOpt = DEFAULT_PIPELINE,
    units: UnitsOpt = Units.gib,
    json_path: JsonOpt = None,
) -> None:
    """Evaluate the seed formula, stage by stage, and beside it the calibrated column: the simulator's peaks
    for the card, dtype and switches, in closed form. Pure Python (no GPU, no torch)."""
    from sdvram.estimate import estimate as run_estimate
    from sdvram.inputs import parse_batch, parse_tokens
    from sdvram.report import estimate_table, to_json

    with failures():
        target = _target(gpu, vram, arch, reserve)
        with reserved((json_path, "JSON document", "json")) as pendings:
            result = run_estimate(_size(height, "height"), _size(width, "width"),
                                  None if tokens is None else parse_tokens(tokens), image=_image(image, image_opt),
                                  prompt=prompt, batch=parse_batch(batch), safety_checker=safety_checker,
                                  gpu=target, dtype=dtype.value, vae_tiling=vae_tiling, vae_slicing=vae_slicing,
                                  attention_slicing=attention_slicing, offload=offload.value, pipeline=pipeline)
            document = to_json(result.to_json()) + "\n"
            if json_path == STDOUT:
                sys.stdout.write(document)
                return
            out.print(estimate_table(result, units))
            for note in result.notes:
                say(f"note: {note}")
            _deliver_files(pendings, {"json": lambda p: p.commit_text(document)})


@app.command(short_help="Measure the real pipeline on a GPU, stage by stage.")
def profile(
    image: ImageArg = None,
    image_opt: ImageOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    prompt: PromptOpt = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE",
                                        help="cuda, cuda:N, or cpu (the same instrumented pipeline).")
                      ] = "cuda",
    dtype: DTypeOpt = None,
    weights: Annotated[Weights, typer.Option(
        "--weights", case_sensitive=False,
        help="pretrained: load --model; random: build the architecture from the shipped configs (same memory).")
    ] = Weights.pretrained,
    model: Annotated[str | None, typer.Option(
        "--model", metavar="ID_OR_PATH",
        help="Hub id or local folder for pretrained weights [default: stable-diffusion-v1-5/stable-diffusion-v1-5]."
    )] = None,
    architecture: ArchitectureOpt = Architecture.full,
    pipeline: PipelineOpt = DEFAULT_PIPELINE,
    mask: MaskOpt = None,
    vae: VaeOpt = None,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    guidance: GuidanceOpt = None,
    batch: BatchOpt = "1",
    seed: Annotated[str, typer.Option("--seed", metavar="N", help="Seed of the random generator.")] = "0",
    safety_checker: SafetyOpt = False,
    vae_tiling: VaeTilingOpt = False,
    vae_slicing: VaeSlicingOpt = False,
    attention_slicing: AttentionSlicingOpt = None,
    offload: OffloadOpt = Offload.none,
    json_path: JsonOpt = None,
    save_image: Annotated[Path | None, typer.Option(
        "--save-image", metavar="PATH", help="Keep the pipeline's output image (format from the extension).")] = None,
    timeline: TimelineOpt = None,
    units: UnitsOpt = Units.gib,
    verbose: Annotated[bool, typer.Option("--verbose", help="Also list what the simulation does not model.")] = False,
) -> None:
    """Run the real pipeline (SD v1.5 img2img unless --pipeline) and record the peak memory of every stage beside
    the seed formula (on a GPU, beside the simulation of the same settings too)."""
    with failures():
        _require_profile_extra()
        from sdvram.requests import ProfileOptions, check_profile_options, check_switches_on_device

        settings = _settings(pipeline, steps, strength, guidance, batch, seed, safety_checker, vae_tiling,
                             vae_slicing, attention_slicing, offload)
        request = _run_request(_image(image, image_opt), height, width, prompt, dtype, architecture, settings,
                               pipeline, mask, vae)
        options = ProfileOptions(device=device, weights=weights, model=model, save_image=save_image,
                                 timeline=timeline is not None)
        check_profile_options(options, architecture)
        check_switches_on_device(settings, device)
        if offload is not Offload.none:
            from sdvram.extras import OFFLOAD_MODULES, require_profile_extra

            require_profile_extra(OFFLOAD_MODULES)
        from sdvram.engine import resolve

        resolve(request)  # every value checked before anything is built or reserved
        if architecture is Architecture.full and device == "cpu":
            say(f"note: {request.family.title} on a CPU takes a long time (each UNet call runs for seconds); "
                "--architecture tiny --weights random checks the same pipeline in seconds.")
        _run_and_deliver("profile", request, options, json_path, save_image, units, verbose, timeline)


@app.command(short_help="Predict a card's memory, stage by stage, without a GPU.")
def simulate(
    image: ImageArg = None,
    image_opt: ImageOpt = None,
    height: HeightOpt = None,
    width: WidthOpt = None,
    prompt: PromptOpt = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", metavar="NAME", help=f"The card to predict: {', '.join(GPUS)}; or cpu (what profile --device cpu "
        f"measures) [default: {DEFAULT_GPU}].")] = None,
    vram: VramOpt = None,
    arch: ArchOpt = None,
    reserve: ReserveOpt = None,
    dtype: DTypeOpt = None,
    architecture: ArchitectureOpt = Architecture.full,
    pipeline: PipelineOpt = DEFAULT_PIPELINE,
    mask: MaskOpt = None,
    vae: VaeOpt = None,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    guidance: GuidanceOpt = None,
    batch: BatchOpt = "1",
    safety_checker: SafetyOpt = False,
    vae_tiling: VaeTilingOpt = False,
    vae_slicing: VaeSlicingOpt = False,
    attention_slicing: AttentionSlicingOpt = None,
    offload: OffloadOpt = Offload.none,
    attention: Annotated[Kernel, typer.Option(
        "--attention", case_sensitive=False,
        help="auto: the kernel PyTorch picks for the card; or only flash, efficient or math, as "
             "torch.nn.attention.sdpa_kernel allows (an error where that kernel cannot run).")] = Kernel.auto,
    explain: Annotated[bool, typer.Option(
        "--explain", help="List what is live at each peak, grouped by the module that made it.")] = False,
    timeline: TimelineOpt = None,
    json_path: JsonOpt = None,
    units: UnitsOpt = Units.gib,
    verbose: Annotated[bool, typer.Option("--verbose", help="Also list what the simulation does not model.")] = False,
) -> None:
    """Predict a GPU's memory without a GPU: the real pipeline on PyTorch's meta device, with the caching
    allocator, cuDNN/cuBLAS workspaces and the attention kernels of the card modelled."""
    with failures():
        _require_profile_extra()
        target = _target(gpu, vram, arch, reserve)
        settings = _settings(pipeline, steps, strength, guidance, batch, "0", safety_checker, vae_tiling,
                             vae_slicing, attention_slicing, offload)
        request = _run_request(_image(image, image_opt), height, width, prompt, dtype, architecture, settings,
                               pipeline, mask, vae)
        from sdvram.engine import resolve
        from sdvram.requests import check_switches_on_device

        check_switches_on_device(settings, "cuda" if target.is_cuda else "cpu")
        resolve(request)
        from sdvram.requests import SimulateOptions

        # a timeline names what is alive at its peak: the explain snapshots are kept for it
        options = SimulateOptions(target, attention, explain or timeline is not None, timeline=timeline is not None)
        _run_and_deliver("simulate", request, options, json_path, None, units, verbose, timeline, explain)


@app.command(short_help="The largest image that fits a card, with each set of switches.")
def fit(
    image: Annotated[Path | None, typer.Argument(
        metavar="[IMAGE]", help="Take the aspect ratio from this image; or give --aspect.", show_default=False)] = None,
    aspect: Annotated[str | None, typer.Option(
        "--aspect", metavar="W:H", help="Aspect ratio, width to height, e.g. 3:2 [default: 1:1].")] = None,
    gpu: Annotated[str | None, typer.Option(
        "--gpu", metavar="NAME", help=f"The card: {', '.join(GPUS)} [default: {DEFAULT_GPU}].")] = None,
    vram: VramOpt = None,
    arch: ArchOpt = None,
    reserve: ReserveOpt = None,
    dtype: DTypeOpt = None,
    pipeline: PipelineOpt = DEFAULT_PIPELINE,
    vae: VaeOpt = None,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    guidance: GuidanceOpt = None,
    batch: BatchOpt = "1",
    safety_checker: SafetyOpt = False,
    json_path: JsonOpt = None,
    units: UnitsOpt = Units.gib,
) -> None:
    """The largest image that fits a card, with no switches and with each useful combination of diffusers'
    memory-saving switches (a search of simulated runs, sides in multiples of 8)."""
    with failures():
        _require_profile_extra()
        target = _target(gpu, vram, arch, reserve)
        if not target.is_cuda:
            from sdvram.errors import InputError

            raise InputError("fit needs a GPU to fit: give a --gpu from the table, or --vram.")
        shape = _aspect(image, aspect)
        settings = _settings(pipeline, steps, strength, guidance, batch, "0", safety_checker)
        from sdvram.engine import resolve

        request = _run_request(None, "512", "512", None, dtype, Architecture.full, settings, pipeline, vae=vae)
        resolve(request)  # the settings checked before the search
        with reserved((json_path, "JSON document", "json")) as pendings:
            _load_libraries()
            from sdvram.fit import fit as run_fit
            from sdvram.fit import image_verdict
            from sdvram.report import fit_table, to_json

            with search_progress() as progress:
                result = run_fit(request, target, shape, progress)
                if image is not None:
                    result.image = image_verdict(replace(request, image=image, height=None, width=None), target)
            document = to_json(result.to_json()) + "\n"
            if json_path == STDOUT:
                sys.stdout.write(document)
                return
            out.print(fit_table(result, units))
            _deliver_files(pendings, {"json": lambda p: p.commit_text(document)})


@app.command(short_help="Simulate a range of sizes on one or more cards.")
def sweep(
    sizes: Annotated[str, typer.Option(
        "--sizes", metavar="START:STOP:STEP|A,B,...",
        help="Long sides in pixels, multiples of 8: a range (stop included) or a list.")] = "256:2048:128",
    aspect: Annotated[str, typer.Option("--aspect", metavar="W:H", help="Aspect ratio, width to height.")] = "1:1",
    gpu: Annotated[list[str] | None, typer.Option(
        "--gpu", metavar="NAME", help=f"A card, as often as wanted: {', '.join(GPUS)} [default: {DEFAULT_GPU}].")
    ] = None,
    vram: VramOpt = None,
    arch: ArchOpt = None,
    reserve: ReserveOpt = None,
    dtype: DTypeOpt = None,
    pipeline: PipelineOpt = DEFAULT_PIPELINE,
    vae: VaeOpt = None,
    steps: StepsOpt = None,
    strength: StrengthOpt = None,
    guidance: GuidanceOpt = None,
    batch: BatchOpt = "1",
    safety_checker: SafetyOpt = False,
    vae_tiling: VaeTilingOpt = False,
    vae_slicing: VaeSlicingOpt = False,
    attention_slicing: AttentionSlicingOpt = None,
    offload: OffloadOpt = Offload.none,
    csv_path: Annotated[Path | None, typer.Option(
        "--csv", metavar="PATH", help="Write one CSV line per size and card (bytes), whole or not at all.")] = None,
    json_path: JsonOpt = None,
    png_path: Annotated[Path | None, typer.Option(
        "--png", metavar="PATH", help="Plot peak against megapixels (.png or .svg; needs the plot extra).")] = None,
    units: UnitsOpt = Units.gib,
) -> None:
    """Simulate a range of image sizes on one or more cards (the pipeline built once): a table per card, and
    CSV, JSON and a plot on request."""
    with failures():
        _require_profile_extra()
        from sdvram.inputs import parse_sizes

        sides = parse_sizes(sizes)
        shape = _aspect(None, aspect)
        if vram is not None and gpu:
            from sdvram.errors import InputError

            raise InputError("Give either --gpu (as often as wanted) or --vram, not both.")
        cards = [_target(None, vram, arch, reserve)] if vram is not None or arch is not None else \
            [_target(name, None, None, reserve) for name in (gpu or [DEFAULT_GPU])]
        settings = _settings(pipeline, steps, strength, guidance, batch, "0", safety_checker, vae_tiling,
                             vae_slicing, attention_slicing, offload)
        from sdvram.engine import resolve
        from sdvram.requests import check_switches_on_device

        for card in cards:
            check_switches_on_device(settings, "cuda" if card.is_cuda else "cpu")
        request = _run_request(None, "512", "512", None, dtype, Architecture.full, settings, pipeline, vae=vae)
        resolve(request)
        plot_fmt = _plot_format(png_path, "png")
        csv_out = csv_path is not None and str(csv_path) == STDOUT
        if csv_out and json_path == STDOUT:
            from sdvram.errors import InputError

            raise InputError("Only one output can go to standard output: give {csv} or {json} a path.",
                             params=("csv", "json"))
        with reserved((csv_path, "CSV table", "csv"), (json_path, "JSON document", "json"),
                      (png_path, "plot", "png")) as pendings:
            _load_libraries()
            from sdvram.report import sweep_tables, to_json
            from sdvram.sweep import sweep as run_sweep

            with search_progress("simulating: {task.completed} of {task.total} sizes") as progress:
                result = run_sweep(request, sides, shape, cards, progress)
            document = result.to_json()
            if json_path == STDOUT:
                sys.stdout.write(to_json(document) + "\n")
            elif csv_out:
                sys.stdout.write(result.to_csv())
            else:
                out.print(sweep_tables(document, units))
            _deliver_files(pendings, {"csv": lambda p: p.commit_text(result.to_csv()),
                                      "json": lambda p: p.commit_text(to_json(document) + "\n"),
                                      "png": lambda p: _commit_plot(p, "sweep", document, plot_fmt)})


@app.command(short_help="Draw a saved sweep or timeline.")
def plot(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A sweep's JSON, or a record's with a timeline.",
                                         show_default=False)],
    out_path: Annotated[Path | None, typer.Option(
        "--png", "--out", metavar="PATH",
        help="The plot: .png or .svg [default: FILE with .png, if nothing is there].")] = None,
) -> None:
    """Draw a saved result: the memory of a sweep against image size, or a record's memory over the run."""
    with failures():
        from sdvram.errors import InputError
        from sdvram.plots import default_plot_path, figure_for, read_document

        target = out_path if out_path is not None else default_plot_path(file)
        fmt = _plot_format(target, "out")
        document = read_document(file)
        with reserved((target, "plot", "out")) as pendings:
            try:
                figure = figure_for(document)
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError("{file} '{path}' does not hold what a sweep or a timeline holds ({why}).",
                                 params=("file",), path=file, why=exc) from None
        from sdvram import plots

        _deliver_files(pendings, {"out": lambda p: p.commit_with(lambda h: plots.save(figure, h, fmt or "png"))})


def _plot_format(path: Path | None, param: str) -> str | None:
    """The plot's format (png or svg), and the plot extra checked, before any run."""
    if path is None:
        return None
    from sdvram.extras import PLOT_MODULES, require_profile_extra
    from sdvram.plots import plot_format

    fmt = plot_format(path, param)
    require_profile_extra(PLOT_MODULES, extra="plot")
    return fmt


@contextmanager
def reserved(*outputs: tuple[Any, str, str]) -> Iterator[dict[str, Any]]:
    """Reserve each output asked for, ``(path, what, param)`` (checked writable before any run; ``-`` and None
    reserve nothing), keyed by param; if anything fails before they are written, none is left behind."""
    from sdvram.outputs import reserve, same_file

    same_file([(path, param) for path, _, param in outputs])  # one file for two outputs: refused before any work
    pendings: dict[str, Any] = {}
    try:
        for path, what, param in outputs:
            pending = reserve(path, what, param)
            if pending is not None:
                pendings[param] = pending
        yield pendings
    except BaseException:
        for pending in pendings.values():
            pending.discard()
        raise


def _deliver_files(pendings: dict[str, Any], writers: dict[str, Callable[[Any], None]]) -> None:
    """Write each reserved output; a write that fails is reported after the others (exit 6)."""
    problems = []
    for param, pending in pendings.items():
        try:
            writers[param](pending)
            WRITTEN.append(str(pending.path))
            say(f"wrote {pending.path}")
        except WriteError as exc:
            problems.append(exc)
    for problem in problems:
        say(f"error: {problem.render(FLAGS)}")
    if problems:
        raise typer.Exit(problems[0].exit_code)


def _commit_plot(pending: Any, kind: str, document: dict[str, Any], fmt: str | None) -> None:
    """Draw and write the plot inside the commit: an interruption while drawing leaves no temporary file."""
    from sdvram import plots

    def draw(handle: Any) -> None:
        figure = plots.sweep_figure(document) if kind == "sweep" else plots.timeline_figure(document)
        plots.save(figure, handle, fmt or "png")

    pending.commit_with(draw)


def _aspect(image: Path | None, aspect: str | None) -> tuple[int, int]:
    from sdvram.errors import InputError
    from sdvram.inputs import parse_aspect

    if image is not None and aspect is not None:
        raise InputError("Give the aspect ratio once: as an IMAGE or with --aspect.")
    if image is not None:
        from sdvram.images import image_info

        info = image_info(image)
        width, height = info.width, info.height
    else:
        width, height = parse_aspect("1:1" if aspect is None else aspect)  # '' is refused, not the default
    common = math.gcd(width, height)
    return width // common, height // common


def _target(gpu: str | None, vram: str | None, arch: str | None, reserve: str | None = None) -> Any:
    from sdvram.errors import InputError
    from sdvram.gpus import DEFAULT_GPU, custom_gpu, find_gpu, parse_reserve, with_reserve

    held = None if reserve is None else parse_reserve(reserve)
    if vram is not None:
        if gpu is not None:
            raise InputError("Give either --gpu or --vram, not both.")
        return with_reserve(custom_gpu(vram, arch), held)
    if arch is not None:
        raise InputError("--arch goes with --vram (a card not in the table); a --gpu from the table has its own.")
    return with_reserve(find_gpu(DEFAULT_GPU if gpu is None else gpu), held)


def _require_profile_extra() -> None:
    from sdvram.extras import require_profile_extra

    require_profile_extra()


def _load_libraries() -> None:
    """Load torch, diffusers and transformers once the input is checked, Ctrl-C held back meanwhile; on a terminal
    a status line says so for the seconds it takes (the imports are most of a simulation's time)."""
    from sdvram.extras import import_uninterrupted

    if not err.is_terminal:
        import_uninterrupted()
        return
    with err.status("loading torch, diffusers and transformers", spinner="dots"):
        import_uninterrupted()


def _run_and_deliver(kind: str, request: Any, options: Any, json_path: str | None, image_path: Path | None,
                     units: Units, verbose: bool, timeline_path: Path | None = None,
                     show_explain: bool = False) -> None:
    """Reserve the outputs, run, then deliver: the JSON first, the table, the image, the timeline plot; a write
    that fails at the end is reported after the table (exit 6), never losing what could be printed."""
    from sdvram.outputs import image_format

    image_fmt = image_format(image_path, "save_image") if image_path is not None else None
    plot_fmt = _plot_format(timeline_path, "timeline")
    with reserved((json_path, "JSON record", "json"), (image_path, "output image", "save_image"),
                  (timeline_path, "timeline plot", "timeline")) as pendings:
        _load_libraries()  # after the outputs are known to be writable: a bad path is refused in a moment
        with unet_progress() as progress:
            if kind == "profile":
                from sdvram.compare import profile_and_simulate

                result = profile_and_simulate(request, options, progress)
                record, picture = result.record, result.image
            else:
                from sdvram.fit import simulate_with_advice

                record, picture = simulate_with_advice(request, options, progress), None
        _deliver(record, picture, json_path, pendings, image_fmt, plot_fmt, units, verbose, show_explain)


def _deliver(record: Any, picture: Any, json_path: str | None, pendings: dict[str, Any], image_fmt: str | None,
             plot_fmt: str | None, units: Units, verbose: bool, show_explain: bool) -> None:
    from sdvram.profiler import oom_message
    from sdvram.report import explain_tables, record_view, to_json

    problems: list[SdvramError] = []
    document = record.to_json()
    pending_json = pendings.get("json")
    if json_path == STDOUT:
        sys.stdout.write(to_json(document) + "\n")
    else:
        if pending_json is not None:
            try:
                pending_json.commit_text(to_json(document) + "\n")
                WRITTEN.append(str(json_path))
                say(f"wrote {json_path}")
            except WriteError as exc:
                problems.append(exc)
        out.print(record_view(record, units, verbose))
        if show_explain and record.simulation is not None and record.simulation.explain:
            out.print(explain_tables(record, units))
    pending_image = pendings.get("save_image")
    if pending_image is not None:
        if picture is None:
            pending_image.discard()
            say("note: no image was saved: the run did not complete.")
        else:
            try:
                pending_image.commit_with(lambda handle: picture.save(handle, format=image_fmt))
                WRITTEN.append(str(pending_image.path))
                say(f"wrote {pending_image.path}")
            except WriteError as exc:
                problems.append(WriteError(f"{exc}" + (" The JSON record was written." if pending_json else "")))
    pending_plot = pendings.get("timeline")
    if pending_plot is not None:
        if record.timeline is None:
            pending_plot.discard()
            say("note: no timeline was drawn: the run kept none.")
        else:
            try:
                _commit_plot(pending_plot, "timeline", document, plot_fmt)
                WRITTEN.append(str(pending_plot.path))
                say(f"wrote {pending_plot.path}")
            except WriteError as exc:
                problems.append(exc)
    if record.status == "out_of_memory":
        problems.insert(0, OutOfMemoryError(oom_message(record)))
    for problem in problems:
        say(f"error: {problem.render(FLAGS)}")
    if problems:
        raise typer.Exit(problems[0].exit_code)


@contextmanager
def progress_bar(*columns: Any) -> Iterator[Callable[[int, int], None]]:
    """A progress display on stderr with ``columns``, started at the first report (so an error before the work
    prints nothing but its sentence), and only on a terminal: logs and pipes get the result, not a redrawn bar.
    Yields ``advance(done, total)``."""
    from rich.progress import Progress

    bar = Progress(*columns, console=err, transient=True)
    task = bar.add_task("work", total=None)

    def advance(done: int, total: int) -> None:
        if not err.is_terminal:
            return
        if not bar.live.is_started:
            bar.start()
        bar.update(task, completed=done, total=total)

    try:
        yield advance
    finally:
        if bar.live.is_started:
            bar.stop()


def unet_progress() -> Any:
    """A bar over the UNet calls of a run."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return progress_bar(TextColumn("denoising (UNet calls)"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())


def search_progress(text: str = "searching: {task.completed} simulated runs (40 to 50 in all)") -> Any:
    """A counter of the simulated runs a search or a sweep has made (a fit's search of six combinations of switches
    makes 38 on the H200, 48 on an RTX 3060, 49 on a T4: five to thirteen a combination), and the time elapsed."""
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    return progress_bar(SpinnerColumn(), TextColumn(text), TimeElapsedColumn())


def main() -> None:
    """Console-script entry point. Once torch is loaded, the process ends without the interpreter's teardown
    (``_end_now``)."""
    try:
        app()
    except SystemExit as exc:
        if "torch" not in sys.modules:
            raise
        _end_now(exc.code)
    if "torch" in sys.modules:
        _end_now(0)


def _end_now(code: object) -> None:
    """End the process with ``code`` (as ``sys.exit`` takes it) after what a normal exit does that anyone sees:
    standard output and error flushed, the ``atexit`` handlers run (multiprocessing's, logging's, temporary files'
    finalizers, coverage's). What is skipped is the teardown of the modules: with torch, diffusers and transformers
    loaded it frees hundreds of thousands of objects one by one, 0.6 to 0.9 s on the 2-core development machine
    (``benchmarks/imports.py`` measures it), about 15% of a simulation's whole process. Every result file is closed
    by then (``outputs.py`` writes them whole before the command returns)."""
    import atexit
    import os

    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # as Python prints a non-integer exit code and exits 1
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a full disk or closed pipe was reported already (_stdout_failed)
            pass
    os._exit(status)
