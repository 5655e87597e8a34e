"""GPUs that ``sdvram simulate --gpu`` knows: compute capability (which attention kernels PyTorch can run,
which cuBLAS workspace it allocates) and memory (does it fit?). Pure Python.

``memory`` is what the driver reports as the card's total memory. For the H200 it was measured
(``torch.cuda.get_device_properties().total_memory`` on the lent H200, ``docs/measurements``); for the other
cards it is nvidia-smi's ``memory.total`` (MiB) as the driver commonly reports it for that model, not
measured by this project, so it is labelled as such. Usable memory is lower still: the CUDA context (the
runtime, loaded kernels, library handles) takes its share before PyTorch's allocator gets any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sdvram.errors import InputError

MIB = 1024**2
GIB = 1024**3
# The CUDA context measured on the H200 (driver 580.159.04, CUDA 13.0, torch 2.11): NVML's usedGpuMemory for
# the process less torch's peak reserved, 721,420,288 bytes (688 MiB) in every one of the profiles.
H200_CONTEXT = 721_420_288
MEASURED_CONTEXT = "measured on the H200 (driver 580, CUDA 13.0, torch 2.11)"
ASSUMED_CONTEXT = ("the H200's, measured; a context depends on the driver, the CUDA version and the kernels "
                   "loaded, typically a few hundred MiB")
# How far another card's context may be from the H200's: CUDA loads kernels lazily since 11.7, and contexts of a
# few hundred MiB are what nvidia-smi shows for a PyTorch process that has run convolutions and matrix multiplies;
# the H200's 688 MiB is one of them. Not measured here on another card: a quarter of a GiB either way is assumed.
CONTEXT_UNCERTAINTY = 256 * MIB
REPORTED = "nvidia-smi memory.total as the driver reports it for this model (public nvidia-smi logs)"
AS_SOLD = ("the size as sold, in binary units (8 GB is 8 GiB); no driver report of this model was at hand, and "
           "drivers report up to a few MiB less")
MEASURED = "measured: torch.cuda total_memory on the lent H200 (docs/measurements)"
# Memory other processes hold on the card (--reserve). A card with a display runs a desktop session: its
# compositor, and a browser, hold a few hundred MiB of it (what nvidia-smi lists for them on an idle desktop);
# a data-centre card runs no display.
DESKTOP_RESERVE = 512 * MIB
DESKTOP, LAPTOP, DATACENTRE = "desktop", "laptop", "data centre"
RESERVE_SOURCES = {
    DESKTOP: "a desktop session on the same card (compositor, browser), assumed",
    LAPTOP: "a desktop session on the same card (compositor, browser), assumed",
    DATACENTRE: "none: a data-centre card runs no display",
}


@dataclass(frozen=True)
class GpuSpec:
    """A simulation target: a CUDA GPU, or the CPU (what ``profile --device cpu`` measures)."""

    key: str
    name: str
    compute_capability: tuple[int, int] | None  # None for the CPU
    memory: int | None  # bytes the driver reports; None for the CPU
    memory_source: str = AS_SOLD
    context: int = H200_CONTEXT
    context_source: str = ASSUMED_CONTEXT
    kind: str = DESKTOP  # desktop, laptop or data centre: what else holds the card's memory
    reserve: int | None = None  # bytes other processes hold (None: the kind's default)
    reserve_source: str | None = None  # where ``reserve`` comes from (None: the kind's)
    reading: str | None = None  # how a --vram value was read, to be said in the output

    @property
    def is_cuda(self) -> bool:
        return self.compute_capability is not None

    @property
    def sm(self) -> int:
        """Compute capability as one number, e.g. 86 for sm_86 (0 for the CPU)."""
        if self.compute_capability is None:
            return 0
        major, minor = self.compute_capability
        return major * 10 + minor

    @property
    def held_by_others(self) -> int:
        """Bytes other processes hold on the card: ``reserve`` as given, else the kind's default."""
        if self.reserve is not None:
            return self.reserve
        return 0 if self.kind == DATACENTRE else DESKTOP_RESERVE

    @property
    def held_by_others_source(self) -> str:
        return self.reserve_source or RESERVE_SOURCES[self.kind]

    @property
    def context_uncertainty(self) -> int:
        """How far the card's real CUDA context may be from the one assumed (0 where it was measured)."""
        return 0 if self.context_source == MEASURED_CONTEXT else CONTEXT_UNCERTAINTY

    @property
    def capacity(self) -> int | None:
        """What PyTorch's allocator can get: the card's memory less the CUDA context and what others hold."""
        if self.memory is None:
            return None
        return max(0, self.memory - self.context - self.held_by_others)

    def assumptions(self) -> list[str]:
        """What a simulation for this card takes from elsewhere than the card itself."""
        if not self.is_cuda:
            return []
        notes = [f"the CUDA context takes {self.context / MIB:,.0f} MiB ({self.context_source}).",
                 f"the card has {self.memory / MIB if self.memory else 0:,.0f} MiB ({self.memory_source}).",
                 f"other processes hold {self.held_by_others / MIB:,.0f} MiB of it ({self.held_by_others_source}; "
                 "--reserve to change)."]
        if self.reading:
            notes.append(self.reading)
        if self.sm != 90:
            notes.append("cuDNN convolution workspaces follow the rule measured on sm90 (H200, cuDNN 9.19); "
                         f"sm{self.sm} is not measured.")
        notes.append("the software stack measured on the H200: torch 2.11 with cuDNN 9.19 (cuDNN attention first on "
                     "sm90 and sm100).")
        return notes


def _card(key: str, name: str, cc: tuple[int, int], mib: int, source: str = REPORTED, kind: str = DESKTOP
          ) -> GpuSpec:
    return GpuSpec(key, name, cc, mib * MIB, source, kind=kind)


def _sold(key: str, name: str, cc: tuple[int, int], gib: int, kind: str = DESKTOP) -> GpuSpec:
    return GpuSpec(key, name, cc, gib * GIB, AS_SOLD, kind=kind)


GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        # GeForce 10 and 16 series (Pascal sm61, Turing sm75 without tensor cores)
        _sold("gtx1050ti", "NVIDIA GeForce GTX 1050 Ti 4 GB", (6, 1), 4),
        _sold("gtx1060", "NVIDIA GeForce GTX 1060 6 GB", (6, 1), 6),
        _sold("gtx1070", "NVIDIA GeForce GTX 1070 8 GB", (6, 1), 8),
        _sold("gtx1080", "NVIDIA GeForce GTX 1080 8 GB", (6, 1), 8),
        _card("gtx1080ti", "NVIDIA GeForce GTX 1080 Ti 11 GB", (6, 1), 11_264),
        _sold("gtx1650", "NVIDIA GeForce GTX 1650 4 GB", (7, 5), 4),
        _sold("gtx1660", "NVIDIA GeForce GTX 1660 6 GB", (7, 5), 6),
        _sold("gtx1660super", "NVIDIA GeForce GTX 1660 SUPER 6 GB", (7, 5), 6),
        _sold("gtx1660ti", "NVIDIA GeForce GTX 1660 Ti 6 GB", (7, 5), 6),
        # RTX 20 series (Turing, sm75)
        _card("rtx2060", "NVIDIA GeForce RTX 2060 6 GB", (7, 5), 6_144),
        _sold("rtx2060super", "NVIDIA GeForce RTX 2060 SUPER 8 GB", (7, 5), 8),
        _sold("rtx2070", "NVIDIA GeForce RTX 2070 8 GB", (7, 5), 8),
        _sold("rtx2080", "NVIDIA GeForce RTX 2080 8 GB", (7, 5), 8),
        _card("rtx2080ti", "NVIDIA GeForce RTX 2080 Ti 11 GB", (7, 5), 11_264),
        # RTX 30 series (Ampere, sm86)
        _sold("rtx3050", "NVIDIA GeForce RTX 3050 8 GB", (8, 6), 8),
        _card("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", (8, 6), 12_288),
        _card("rtx3060ti", "NVIDIA GeForce RTX 3060 Ti 8 GB", (8, 6), 8_192),
        _card("rtx3070", "NVIDIA GeForce RTX 3070 8 GB", (8, 6), 8_192),
        _sold("rtx3070ti", "NVIDIA GeForce RTX 3070 Ti 8 GB", (8, 6), 8),
        _card("rtx3080", "NVIDIA GeForce RTX 3080 10 GB", (8, 6), 10_240),
        _sold("rtx3080-12gb", "NVIDIA GeForce RTX 3080 12 GB", (8, 6), 12),
        _sold("rtx3080ti", "NVIDIA GeForce RTX 3080 Ti 12 GB", (8, 6), 12),
        _card("rtx3090", "NVIDIA GeForce RTX 3090 24 GB", (8, 6), 24_576),
        _sold("rtx3090ti", "NVIDIA GeForce RTX 3090 Ti 24 GB", (8, 6), 24),
        # RTX 40 series (Ada, sm89): the driver reports 4 MiB less per 8 GiB
        _card("rtx4060", "NVIDIA GeForce RTX 4060 8 GB", (8, 9), 8_188),
        _card("rtx4060ti", "NVIDIA GeForce RTX 4060 Ti 8 GB", (8, 9), 8_188),
        _card("rtx4060ti16", "NVIDIA GeForce RTX 4060 Ti 16 GB", (8, 9), 16_380),
        _card("rtx4070", "NVIDIA GeForce RTX 4070 12 GB", (8, 9), 12_282),
        _card("rtx4070super", "NVIDIA GeForce RTX 4070 SUPER 12 GB", (8, 9), 12_282),
        _card("rtx4070ti", "NVIDIA GeForce RTX 4070 Ti 12 GB", (8, 9), 12_282),
        _card("rtx4070tisuper", "NVIDIA GeForce RTX 4070 Ti SUPER 16 GB", (8, 9), 16_376),
        _card("rtx4080", "NVIDIA GeForce RTX 4080 16 GB", (8, 9), 16_376),
        _card("rtx4080super", "NVIDIA GeForce RTX 4080 SUPER 16 GB", (8, 9), 16_376),
        _card("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", (8, 9), 24_564),
        # RTX 50 series (Blackwell, sm120)
        _card("rtx5060", "NVIDIA GeForce RTX 5060 8 GB", (12, 0), 8_151),
        _card("rtx5060ti16", "NVIDIA GeForce RTX 5060 Ti 16 GB", (12, 0), 16_311),
        _card("rtx5070", "NVIDIA GeForce RTX 5070 12 GB", (12, 0), 12_227),
        _card("rtx5070ti", "NVIDIA GeForce RTX 5070 Ti 16 GB", (12, 0), 16_303),
        _card("rtx5080", "NVIDIA GeForce RTX 5080 16 GB", (12, 0), 16_303),
        _card("rtx5090", "NVIDIA GeForce RTX 5090 32 GB", (12, 0), 32_607),
        # laptop GPUs: the same chips with less memory, and a display on them
        _sold("rtx3050laptop4", "NVIDIA GeForce RTX 3050 Laptop GPU 4 GB", (8, 6), 4, LAPTOP),
        _sold("rtx3050laptop6", "NVIDIA GeForce RTX 3050 6GB Laptop GPU", (8, 6), 6, LAPTOP),
        _sold("rtx3060laptop", "NVIDIA GeForce RTX 3060 Laptop GPU 6 GB", (8, 6), 6, LAPTOP),
        _sold("rtx4050laptop", "NVIDIA GeForce RTX 4050 Laptop GPU 6 GB", (8, 9), 6, LAPTOP),
        _card("rtx4060laptop", "NVIDIA GeForce RTX 4060 Laptop GPU 8 GB", (8, 9), 8_188, kind=LAPTOP),
        _card("rtx4070laptop", "NVIDIA GeForce RTX 4070 Laptop GPU 8 GB", (8, 9), 8_188, kind=LAPTOP),
        _card("rtx4080laptop", "NVIDIA GeForce RTX 4080 Laptop GPU 12 GB", (8, 9), 12_282, kind=LAPTOP),
        _card("rtx4090laptop", "NVIDIA GeForce RTX 4090 Laptop GPU 16 GB", (8, 9), 16_376, kind=LAPTOP),
        # workstation cards
        _card("a4000", "NVIDIA RTX A4000 16 GB", (8, 6), 16_376),
        _card("a5000", "NVIDIA RTX A5000 24 GB", (8, 6), 24_564),
        _card("a6000", "NVIDIA RTX A6000 48 GB", (8, 6), 49_140),
        # data-centre and cloud cards
        _card("v100-16gb", "NVIDIA Tesla V100 16 GB", (7, 0), 16_160, kind=DATACENTRE),
        _card("v100-32gb", "NVIDIA Tesla V100 32 GB", (7, 0), 32_510, kind=DATACENTRE),
        _card("t4", "NVIDIA Tesla T4 16 GB", (7, 5), 15_360, kind=DATACENTRE),
        _card("a10", "NVIDIA A10 24 GB", (8, 6), 23_028, kind=DATACENTRE),
        _card("a10g", "NVIDIA A10G 24 GB", (8, 6), 23_028, kind=DATACENTRE),
        _card("l4", "NVIDIA L4 24 GB", (8, 9), 23_034, kind=DATACENTRE),
        _card("l40s", "NVIDIA L40S 48 GB", (8, 9), 46_068, kind=DATACENTRE),
        _card("a100-40gb", "NVIDIA A100 40 GB", (8, 0), 40_960, kind=DATACENTRE),
        _card("a100-80gb", "NVIDIA A100 80 GB", (8, 0), 81_920, kind=DATACENTRE),
        _card("h100", "NVIDIA H100 80 GB HBM3", (9, 0), 81_559, kind=DATACENTRE),
        GpuSpec("h200", "NVIDIA H200 141 GB HBM3e", (9, 0), 150_109_880_320, MEASURED, H200_CONTEXT,
                MEASURED_CONTEXT, DATACENTRE),
    )
}
CPU = GpuSpec("cpu", "CPU (what `sdvram profile --device cpu` measures)", None, None, "", 0, "", DATACENTRE)
DEFAULT_GPU = "h100"
ALIASES = {"a100": "a100-80gb", "3060": "rtx3060", "4090": "rtx4090", "h10080gb": "h100", "v100": "v100-16gb",
           "4060ti": "rtx4060ti", "rtx4060ti8": "rtx4060ti"}
# --vram: a number and an optional unit. Cards are sold in binary sizes ("8 GB" is 8 GiB), so GB, G and a bare
# number mean GiB; GiB, MiB and MB (10^6) and bytes are exact.
SIZE = re.compile(r"^\s*(\d{1,13}(?:\.\d{1,6})?)\s*(gib|gb|g|mib|mb|m|b|bytes)?\s*$", re.IGNORECASE)
UNIT_BYTES = {"gib": GIB, "gb": GIB, "g": GIB, "": GIB, "mib": MIB, "m": MIB, "mb": 10**6, "b": 1, "bytes": 1}
AS_GIB = ("gb", "g", "")  # read as GiB though they may mean 10^9: said in the output
MAX_VRAM = 1024 * GIB  # 1 TiB: no card comes near it
# --arch: "sm86", "sm_86", "86", "8.6" (as nvidia-smi and torch.cuda.get_device_capability print it)
ARCH = re.compile(r"^\s*(?:sm_?)?(\d{1,3})(?:\.(\d))?\s*$", re.IGNORECASE)
KNOWN_SM = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)


def find_gpu(name: str) -> GpuSpec:
    """The GPU called ``name`` (case, spaces, dashes and a leading "nvidia"/"geforce" ignored), or an
    InputError that suggests the nearest names."""
    wanted = _norm(name)
    if not wanted:
        raise InputError("{gpu} is empty; give a card's name such as rtx3060, or --vram for another card.",
                         params=("gpu",))
    for spec in (*GPUS.values(), CPU):
        if wanted in (_norm(spec.key), _norm(spec.name)):
            return spec
    if wanted in ALIASES:
        return GPUS[ALIASES[wanted]]
    import difflib

    names = [*GPUS, CPU.key]
    near = difflib.get_close_matches(wanted, [_norm(n) for n in names], n=3, cutoff=0.5)
    nearest = [n for n in names if _norm(n) in near]
    if nearest:
        raise InputError("Unknown {gpu} '{got}'; did you mean {nearest}? (--help lists every card; {vram} and "
                         "{arch} give another)", params=("gpu", "vram", "arch"), got=name, nearest=", ".join(nearest))
    raise InputError("Unknown {gpu} '{got}'; known: {known}; or give {vram} (and {arch}) for another card.",
                     params=("gpu", "vram", "arch"), got=name, known=", ".join(names))


def parse_vram(text: str) -> tuple[int, str]:
    """A card's memory as typed, and how it was read: "8GB", "8 GB", "8G" and "8" are 8 GiB (cards are sold in
    binary sizes), "8GiB" too; "8192MiB", "8000MB" (10^6 bytes each) and "8589934592B" are exact."""
    match = SIZE.match(str(text))
    if match is None:
        raise InputError("{vram} must be a size such as 8GB (read as 8 GiB), 12GiB, 8192MiB or 8000MB; got "
                         "'{got}'.", params=("vram",), got=str(text)[:40])
    unit = (match.group(2) or "").lower()
    value = int(float(match.group(1)) * UNIT_BYTES[unit])
    if not MIB <= value <= MAX_VRAM:
        raise InputError("{vram} must be from 1 MiB to 1 TiB; got '{got}'.", params=("vram",), got=str(text)[:40])
    shown = match.group(1) + (match.group(2) or "")
    reading = (f"--vram {shown} read as {float(match.group(1)):g} GiB = {value:,} B (cards are sold in binary "
               "sizes; give MB for 10^6 bytes)") if unit in AS_GIB else f"--vram {shown} = {value:,} B"
    return value, reading


def parse_arch(text: str) -> tuple[int, int]:
    """A compute capability as typed: "sm86", "sm_90", "8.9" (as nvidia-smi prints it), "89"."""
    match = ARCH.match(str(text))
    sm = None
    if match is not None:
        sm = int(match.group(1)) * 10 + int(match.group(2)) if match.group(2) is not None else int(match.group(1))
    if sm is None or sm not in KNOWN_SM:
        raise InputError("{arch} must be a CUDA compute capability such as sm86, sm_89 or 8.9 (known: {known}); "
                         "got '{got}'.", params=("arch",), known=", ".join(f"sm{s}" for s in KNOWN_SM),
                         got=str(text)[:40])
    return divmod(sm, 10)


def parse_reserve(text: str) -> int:
    """--reserve: memory other processes hold on the card, as --vram reads sizes; 0 allowed."""
    match = SIZE.match(str(text))
    if match is not None and float(match.group(1)) == 0:  # nothing held, in whatever unit
        return 0
    try:
        return parse_vram(text)[0]
    except InputError:
        raise InputError("{reserve} must be a size such as 512MiB, 1GB (read as 1 GiB) or 0; got '{got}'.",
                         params=("reserve",), got=str(text)[:40]) from None


def custom_gpu(vram: str, arch: str | None = None) -> GpuSpec:
    """A card given by its memory and compute capability (default sm86, the most common consumer Ampere)."""
    memory, reading = parse_vram(vram)
    capability = parse_arch(arch) if arch is not None else (8, 6)
    return GpuSpec("custom", f"the {memory / GIB:g} GiB sm{capability[0]}{capability[1]} card", capability, memory,
                   "given by the user", H200_CONTEXT, ASSUMED_CONTEXT, DESKTOP, reading=reading)


def with_reserve(gpu: GpuSpec, reserve: int | None) -> GpuSpec:
    """``gpu`` with ``reserve`` bytes held by other processes (None: its kind's default)."""
    if reserve is None or not gpu.is_cuda:
        return gpu
    return replace(gpu, reserve=reserve, reserve_source="given with --reserve")


def spec_for_device(name: str, capability: tuple[int, int], memory: int) -> GpuSpec:
    """A spec for a GPU seen by torch (``profile`` simulates the card it runs on, as it is: nothing else on it)."""
    return GpuSpec("measured", name, capability, memory, "torch.cuda total_memory of this card", H200_CONTEXT,
                   ASSUMED_CONTEXT, DATACENTRE)


def _norm(text: str) -> str:
    text = text.lower().replace("nvidia", "").replace("geforce", "").replace("tesla", "")
    return "".join(ch for ch in text if ch.isalnum())
