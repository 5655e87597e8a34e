"""Checking what the user asks for: sizes, counts, settings. Pure Python.

Every check names the parameter (``height``, ``steps``) in its error; the CLI spells it as its flag. The
``parse_*`` functions take text as typed (or an int) and return the typed value, so the CLI can build a
typed request at its edge and the library can check values given from Python with the same words.
"""

from __future__ import annotations

import math

from sdvram.architecture import CLIP_MAX_TOKENS, VAE_SCALE_FACTOR
from sdvram.errors import InputError

MIN_SIDE = VAE_SCALE_FACTOR  # one latent pixel: below 8 px the latent has no pixels at all
# A guard against typos (51200 for 5120), not a limit of the model: at 16384 px a side the seed formula
# already asks for ~22 GiB and the real UNet far more than any single GPU holds.
MAX_SIDE = 16384
MAX_BATCH = 64  # a guard against typos; activations grow linearly with the batch
MAX_STEPS = 1000  # PNDM's num_train_timesteps: the scheduler cannot take more inference steps
MAX_GUIDANCE = 100.0  # a guard against typos; SD v1.5 is used at 1 to 15
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed takes an unsigned 64-bit seed


def plural(count: int, noun: str) -> str:
    """``"1 pixel"``, ``"2 pixels"``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def parse_int(value: str | int, param: str, low: int, high: int, what: str = "") -> int:
    """``value`` as an int within [low, high], else an InputError that says what is allowed (``what``: the
    unit, as in "a whole number of pixels")."""
    kind = f"a whole number of {what}" if what else "a whole number"
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text, 10)
        except ValueError:
            raise InputError(f"{{{param}}} must be {kind} from {{low}} to {{high}}; got '{{got}}'.",
                             params=(param,), low=low, high=high, got=value) from None
    if not low <= number <= high:
        raise InputError(f"{{{param}}} must be {kind} from {{low}} to {{high}}; got {{got}}.",
                         params=(param,), low=low, high=high, got=number)
    return number


def parse_float(value: str | float, param: str) -> float:
    """``value`` as a finite float, else an InputError naming ``param``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        try:
            number = float(str(value).strip())
        except ValueError:
            raise InputError(f"{{{param}}} must be a number; got '{{got}}'.", params=(param,), got=value) from None
    if not math.isfinite(number):
        raise InputError(f"{{{param}}} must be a finite number; got {{got}}.", params=(param,), got=value)
    return number


def parse_side(value: str | int, param: str, low: int = MIN_SIDE) -> int:
    """An image height or width in pixels."""
    return parse_int(value, param, low, MAX_SIDE, "pixels")


def parse_tokens(value: str | int, param: str = "tokens") -> int:
    """A CLIP prompt length, start and end tokens included."""
    return parse_int(value, param, 1, CLIP_MAX_TOKENS, "CLIP tokens")


def parse_batch(value: str | int, param: str = "batch") -> int:
    """Images generated per call."""
    return parse_int(value, param, 1, MAX_BATCH, "images")


def parse_steps(value: str | int, param: str = "steps") -> int:
    """num_inference_steps."""
    return parse_int(value, param, 1, MAX_STEPS)


def parse_seed(value: str | int, param: str = "seed") -> int:
    """The generator's seed."""
    return parse_int(value, param, 0, MAX_SEED)


def parse_strength(value: str | float, param: str = "strength") -> float:
    number = parse_float(value, param)
    if not 0 < number <= 1:
        raise InputError(f"{{{param}}} must be above 0 and at most 1; got {{got:g}}.", params=(param,), got=number)
    return number


def parse_guidance(value: str | float, param: str = "guidance") -> float:
    number = parse_float(value, param)
    if not 0 <= number <= MAX_GUIDANCE:
        raise InputError(f"{{{param}}} must be from 0 to {{high:g}}; got {{got:g}}.", params=(param,),
                         high=MAX_GUIDANCE, got=number)
    return number


def parse_attention_slicing(value: str | int | None, param: str = "attention_slicing") -> str | int | None:
    """diffusers' ``enable_attention_slicing(slice_size)``: "auto" (half the heads a slice), "max" (one head
    a slice) or a whole number of heads per slice; None: off."""
    if value is None:
        return None
    text = str(value).strip().lower()
    if text in ("auto", "max"):
        return text
    try:
        number = int(text, 10)
    except ValueError:
        number = 0
    if number < 1:
        raise InputError(f"{{{param}}} must be auto, max or a whole number of heads per slice, 1 or more; got "
                         "'{got}'.", params=(param,), got=value)
    return number


def parse_aspect(value: str, param: str = "aspect") -> tuple[int, int]:
    """An aspect ratio as typed, width to height: "3:2", "16:9", "1:1"."""
    parts = str(value).strip().split(":")
    try:
        width, height = (int(part, 10) for part in parts)
    except ValueError:
        width = height = 0
    if width < 1 or height < 1 or max(width, height) > MAX_SIDE:
        raise InputError(f"{{{param}}} must be width:height in whole numbers from 1, such as 3:2 or 16:9; got "
                         "'{got}'.", params=(param,), got=value)
    return width, height


MAX_SWEEP_POINTS = 200  # a guard against typos (256:16384:1); each point is a simulation of about a second


def parse_sizes(value: str, param: str = "sizes") -> list[int]:
    """Image sides as typed: "256:2048:128" (start:stop:step, stop included when the steps reach it) or a list,
    "512,768,1024". Each a multiple of 8 from 8 to 16384 pixels; at most 200 of them."""
    text = str(value).strip()

    def refuse() -> InputError:
        return InputError(f"{{{param}}} must be START:STOP:STEP or a comma-separated list of sides in pixels, each "
                          "from {low} to {high}, such as 256:2048:128 or 512,768,1024; got '{got}'.",
                          params=(param,), low=MIN_SIDE, high=MAX_SIDE, got=value)

    try:
        if ":" in text:
            start, stop, step = (int(part, 10) for part in text.split(":"))
            if step < 1 or stop < start or not (MIN_SIDE <= start and stop <= MAX_SIDE):
                raise refuse()  # bounded before the range is made: 0:10**20:1 would not fit in memory
            sides = list(range(start, stop + 1, step))
        else:
            sides = [int(part, 10) for part in text.split(",")]
    except ValueError:
        raise refuse() from None
    if not sides or any(not MIN_SIDE <= side <= MAX_SIDE for side in sides):
        raise refuse()
    odd = [side for side in sides if side % VAE_SCALE_FACTOR]
    if odd:
        raise InputError(f"{{{param}}} must be multiples of {{unit}} pixels (the pipeline crops to them); got {{got}}.",
                         params=(param,), unit=VAE_SCALE_FACTOR, got=odd[0])
    if len(sides) > MAX_SWEEP_POINTS:
        raise InputError(f"{{{param}}} gives {{n}} sizes; at most {{most}} are swept at once.", params=(param,),
                         n=len(sides), most=MAX_SWEEP_POINTS)
    return sides
