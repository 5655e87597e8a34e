"""``estimate()``: the public entry point of the estimate path. Resolves what the user gave (sizes or an
image, a token count or a prompt) and evaluates the seed formula. Never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdvram.architecture import CLIP_MAX_TOKENS
from sdvram.errors import InputError
from sdvram.formula import SeedEstimate, seed_estimate
from sdvram.inputs import parse_batch, parse_side, parse_tokens

DEFAULT_TOKENS = CLIP_MAX_TOKENS  # the pipeline pads every prompt to 77 tokens, so 77 is what it really runs


@dataclass(frozen=True)
class Estimate:
    """A seed-formula estimate with where its inputs came from. Figures are in bytes (``seed``)."""

    seed: SeedEstimate
    image: str | None  # the image the size was read from, if any
    prompt: str | None  # the prompt the tokens were counted from, if any
    tokens_source: str  # "--tokens", "--prompt", "manifest" or "default"
    untruncated_tokens: int | None  # the prompt's length before the pipeline's cut at 77, when counted
    notes: tuple[str, ...]


def estimate(
    height: int | str | None = None,
    width: int | str | None = None,
    tokens: int | str | None = None,
    *,
    image: str | Path | None = None,
    prompt: str | None = None,
    batch: int | str = 1,
    safety_checker: bool = False,
) -> Estimate:
    """The seed formula for an image size (``height``/``width`` or ``image``) and a prompt length
    (``tokens`` or ``prompt``; default 77). Raises ``InputError`` on anything not allowed."""
    if image is not None and (height is not None or width is not None):
        raise InputError("Give either --image or both --h and --w, not both.")
    if image is None and (height is None or width is None):
        raise InputError("Give the image size as both --h and --w (pixels), or an image with --image.")
    if tokens is not None and prompt is not None:
        raise InputError("Give either --tokens or --prompt, not both.")

    notes: list[str] = []
    if image is not None:
        from sdvram.images import image_info  # Pillow, only when there is an image to read

        info = image_info(image)
        h, w = info.height, info.width
    else:
        assert height is not None and width is not None
        h, w = parse_side(height, "--h"), parse_side(width, "--w")
    if h % 8 or w % 8:
        notes.append(
            f"The pipeline rounds {w}x{h} down to {w - w % 8}x{h - h % 8} (multiples of 8); "
            "the seed formula uses the size as given."
        )

    source = "--tokens"
    untruncated = None
    if prompt is None and tokens is None and image is not None:
        from sdvram.images import manifest_prompt

        prompt = manifest_prompt(image)
        source = "manifest"
    if prompt is not None:
        from sdvram.tokenizer import count_tokens  # reads the 1.3 MB vocabulary, only for a prompt

        source = "--prompt" if source != "manifest" else source
        counted = count_tokens(prompt)
        n_tokens, untruncated = counted.tokens, counted.untruncated
        if counted.truncated:
            notes.append(
                f"The prompt is {counted.untruncated} tokens; the pipeline truncates it to {CLIP_MAX_TOKENS}."
            )
    elif tokens is not None:
        n_tokens = parse_tokens(tokens)
    else:
        n_tokens, source = DEFAULT_TOKENS, "default"
    notes.append(
        "The real pipeline pads every prompt to 77 tokens, so its memory does not depend on the prompt length."
    )
    notes.append("This is the seed formula; 'sdvram simulate' predicts what the real pipeline allocates on a GPU.")
    seed = seed_estimate(h, w, n_tokens, batch=parse_batch(batch), safety_checker=safety_checker)
    return Estimate(
        seed=seed,
        image=str(image) if image is not None else None,
        prompt=prompt,
        tokens_source=source,
        untruncated_tokens=untruncated,
        notes=tuple(notes),
    )
