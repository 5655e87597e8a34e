"""Validation of what the user asks for: image sizes, token counts, batch. Pure Python."""

from __future__ import annotations

from sdvram.architecture import CLIP_MAX_TOKENS, VAE_SCALE_FACTOR
from sdvram.errors import InputError

MIN_SIDE = VAE_SCALE_FACTOR  # one latent pixel: below 8 px the latent has no pixels at all
# A guard against typos (51200 for 5120), not a limit of the model: at 16384 px a side the seed formula
# already asks for ~22 GiB and the real UNet far more than any single GPU holds.
MAX_SIDE = 16384
MAX_BATCH = 64  # a guard against typos; activations grow linearly with the batch


def parse_int(value: str | int, option: str, low: int, high: int, what: str) -> int:
    """``value`` as an int within [low, high], else an InputError that says what is allowed."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    else:
        text = str(value).strip()
        try:
            number = int(text, 10)
        except ValueError:
            raise InputError(
                f"{option} must be a whole number of {what} from {low} to {high}; got '{value}'."
            ) from None
    if not low <= number <= high:
        raise InputError(f"{option} must be a whole number of {what} from {low} to {high}; got {number}.")
    return number


def parse_side(value: str | int, option: str) -> int:
    """An image height or width in pixels."""
    return parse_int(value, option, MIN_SIDE, MAX_SIDE, "pixels")


def parse_tokens(value: str | int, option: str = "--tokens") -> int:
    """A CLIP prompt length, start and end tokens included."""
    return parse_int(value, option, 1, CLIP_MAX_TOKENS, "CLIP tokens")


def parse_batch(value: str | int, option: str = "--batch") -> int:
    """Images generated per call."""
    return parse_int(value, option, 1, MAX_BATCH, "images")
