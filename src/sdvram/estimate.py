"""``estimate()``: the public entry point of the estimate path. Resolves what the user gave (a size or an
image, a token count or a prompt) and evaluates the seed formula. Never imports torch.

``Estimate.to_json`` is the schema of ``sdvram estimate --json``, kept beside the data it describes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdvram.architecture import CLIP_MAX_TOKENS
from sdvram.calibrated import Calibrated, calibrate, on_card_reserved, verdict
from sdvram.errors import InputError
from sdvram.formula import OVERHEAD_DENOMINATOR, OVERHEAD_NUMERATOR, SeedEstimate, seed_estimate
from sdvram.gpus import GpuSpec
from sdvram.inputs import MIN_SIDE, parse_attention_slicing, parse_batch, parse_side, parse_tokens
from sdvram.pipelines import DEFAULT, Family, find_family
from sdvram.requests import switches_on
from sdvram.verdicts import margin_for

# The prompt every command uses when given none (neither a prompt nor an image with a manifest entry);
# the output names it, and its tokens are counted as any prompt's are.
DEFAULT_PROMPT = "a detailed photograph of a landscape"
# of the estimate's JSON document; bump when a field changes meaning (3: "calibrated"; 4: "pipeline" and
# "seed_formula_applies": the seed formula's figures are only the specification of SD v1.5 img2img)
SCHEMA_VERSION = 4


@dataclass(frozen=True)
class Estimate:
    """A seed-formula estimate with where its inputs came from. Figures are in bytes (``seed``)."""

    seed: SeedEstimate
    image: str | None  # the image the size was read from, if any
    prompt: str | None  # the prompt the tokens were counted from (None when a token count was given)
    tokens_source: str  # "tokens" (given), "prompt" (given), "manifest" (the image's) or "default prompt"
    untruncated_tokens: int | None  # the prompt's length before the pipeline's cut at 77 (None: over 77)
    notes: tuple[str, ...]
    gpu: GpuSpec | None  # the card the calibrated column is for (None: no calibrated column asked for)
    dtype: str
    switches: tuple[str, ...]  # the switches that are on (requests.SWITCH_ORDER); the seed formula has none
    calibrated: Calibrated | str | None  # the calibrated peaks, or why there are none for these settings
    family: Family = find_family(DEFAULT)  # the pipeline asked about; the seed formula is SD v1.5 img2img's

    @property
    def seed_formula_applies(self) -> bool:
        return self.family.seed_formula

    @property
    def reserved(self) -> int | None:
        """The calibrated peak reserved on the card: never more than the card's usable memory."""
        if not isinstance(self.calibrated, Calibrated) or self.gpu is None:
            return None
        capacity = self.gpu.capacity
        return self.calibrated.peak_reserved if capacity is None else on_card_reserved(self.calibrated, capacity)

    @property
    def nvidia_smi(self) -> int | None:
        """The calibrated peak reserved on the card plus the CUDA context: what nvidia-smi would show for the
        process."""
        reserved = self.reserved
        if reserved is None or self.gpu is None:
            return None
        return reserved + self.gpu.context

    @property
    def margin(self) -> int | None:
        """The card's margin for this run (``verdicts.margin_for``), in bytes."""
        if not isinstance(self.calibrated, Calibrated) or self.gpu is None:
            return None
        return margin_for(self.gpu).of(self.calibrated.peak_reserved)

    @property
    def verdict(self) -> str | None:
        """``calibrated.verdict`` on the card with its margin: fits, tight or does not fit (None: no calibrated
        answer, or a card without a capacity)."""
        capacity = self.gpu.capacity if self.gpu is not None else None
        if not isinstance(self.calibrated, Calibrated) or capacity is None or self.margin is None:
            return None
        return verdict(self.calibrated, capacity, self.margin)

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``sdvram estimate --json`` (and a record's ``formula``): inputs, then every
        figure in bytes."""
        seed = self.seed
        return {
            "method": "seed",
            "schema_version": SCHEMA_VERSION,
            "pipeline": self.family.name,
            "seed_formula_applies": self.seed_formula_applies,
            "inputs": {
                "width": seed.width,
                "height": seed.height,
                "tokens": seed.tokens,
                "tokens_source": self.tokens_source,
                "untruncated_tokens": self.untruncated_tokens,
                "batch": seed.batch,
                "safety_checker": seed.safety_checker,
                "image": self.image,
                "prompt": self.prompt,
            },
            "bytes": {**seed.stage_bytes(), "overhead": seed.overhead, "total": seed.total},
            "peak_stage": seed.peak_stage,
            "overhead_factor": OVERHEAD_NUMERATOR / OVERHEAD_DENOMINATOR,
            "calibrated": self._calibrated_json(),
            "notes": list(self.notes),
        }

    def _calibrated_json(self) -> dict[str, Any] | None:
        if self.gpu is None:
            return None
        settings = {"gpu": self.gpu.key, "gpu_name": self.gpu.name, "compute_capability": self.gpu.sm,
                    "dtype": self.dtype, "switches": list(self.switches)}
        if not isinstance(self.calibrated, Calibrated):
            return {**settings, "unavailable": self.calibrated}
        figures = self.calibrated.to_json()
        figures["bytes"].update(peak_reserved=self.reserved, context=self.gpu.context,
                                predicted_nvidia_smi=self.nvidia_smi, capacity=self.gpu.capacity,
                                held_by_others=self.gpu.held_by_others, margin=self.margin)
        return {**settings, **figures, "verdict": self.verdict}


def estimate(
    height: int | None = None,
    width: int | None = None,
    tokens: int | None = None,
    *,
    image: str | Path | None = None,
    prompt: str | None = None,
    batch: int = 1,
    safety_checker: bool = False,
    min_side: int = MIN_SIDE,
    gpu: GpuSpec | None = None,
    dtype: str = "float16",
    vae_tiling: bool = False,
    vae_slicing: bool = False,
    attention_slicing: str | int | None = None,
    offload: str = "none",
    pipeline: str = DEFAULT,
) -> Estimate:
    """The seed formula for an image size (``height`` and ``width``, or ``image``) and a prompt length
    (``tokens``, or the tokens of ``prompt``, else of the image's manifest prompt, else of
    ``DEFAULT_PROMPT``). ``safety_checker`` counts its weights in the base (the seed's formula does not).
    Beside it, when a ``gpu`` is given, the calibrated peaks on it in ``dtype`` with the switches given (which
    the seed formula does not know). For another ``pipeline`` than SD v1.5 img2img the seed formula is evaluated
    for the same inputs but does not apply (the result says so), and nothing is calibrated. Raises ``InputError``
    naming the parameter on anything not allowed."""
    family = find_family(pipeline)
    if image is not None and (height is not None or width is not None):
        raise InputError("Give either {image} or both {height} and {width}, not both.",
                         params=("image", "height", "width"))
    if image is None and (height is None or width is None):
        raise InputError("Give the image size as both {height} and {width} (pixels), or an {image}.",
                         params=("height", "width", "image"))
    if tokens is not None and prompt is not None:
        raise InputError("Give either {tokens} or {prompt}, not both.", params=("tokens", "prompt"))

    notes: list[str] = []
    if image is not None:
        from sdvram.images import image_info  # Pillow, only when there is an image to read

        info = image_info(image, min_side)
        w, h = info.width, info.height
        notes.extend(info.notes)
    else:
        assert height is not None and width is not None
        h, w = parse_side(height, "height", min_side), parse_side(width, "width", min_side)
    if h % 8 or w % 8:
        notes.append(
            f"The pipeline rounds {w} x {h} px (W x H) down to {w - w % 8} x {h - h % 8} (multiples of 8); "
            "the seed formula uses the size as given."
        )

    untruncated = None
    if tokens is not None:
        n_tokens, source = parse_tokens(tokens), "tokens"
    else:
        source = "prompt"
        if prompt is None and image is not None:
            from sdvram.images import manifest_prompt

            prompt = manifest_prompt(image)
            source = "manifest"
        if prompt is None:
            prompt, source = DEFAULT_PROMPT, "default prompt"
        from sdvram.tokenizer import count_tokens  # reads the 1.3 MB vocabulary, only for a prompt

        counted = count_tokens(prompt)
        n_tokens, untruncated = counted.tokens, counted.untruncated
        if counted.truncated:
            notes.append(f"The prompt is {counted.describe()}; the pipeline truncates it to {CLIP_MAX_TOKENS}.")
    notes.append(
        "The real pipeline pads every prompt to 77 tokens, so its memory does not depend on the prompt length."
    )
    seed = seed_estimate(h, w, n_tokens, batch=parse_batch(batch), safety_checker=safety_checker)
    slicing = parse_attention_slicing(attention_slicing)
    switches = switches_on(vae_slicing, vae_tiling, slicing, offload)
    if switches:
        notes.append("The seed formula knows no memory-saving switch; only the calibrated column counts them.")
    calibrated: Calibrated | str | None = None
    if not family.seed_formula:
        notes.append(f"The seed formula specifies SD v1.5 img2img; it does not apply to {family.title}.")
    if gpu is not None:
        if not family.seed_formula:
            calibrated = f"calibrated for sd15-img2img only; simulate {family.name}"
        elif gpu.is_cuda:
            calibrated = calibrate(h, w, batch=seed.batch, dtype=dtype, sm=gpu.sm, switches=switches,
                                   attention_slicing=slicing, safety_checker=safety_checker)
        else:
            calibrated = "the calibrated column predicts a CUDA GPU, not the CPU"
    return Estimate(
        seed=seed,
        image=str(image) if image is not None else None,
        prompt=prompt,
        tokens_source=source,
        untruncated_tokens=untruncated,
        notes=tuple(notes),
        gpu=gpu,
        dtype=dtype,
        switches=switches,
        calibrated=calibrated,
        family=family,
    )
