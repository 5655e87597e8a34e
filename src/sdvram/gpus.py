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
from dataclasses import dataclass

from sdvram.errors import InputError

MIB = 1024**2
GIB = 1024**3
# The CUDA context measured on the H200 (driver 580.159.04, CUDA 13.0, torch 2.11): NVML's usedGpuMemory for
# the process less torch's peak reserved, 721,420,288 bytes (688 MiB) in every one of five profiles.
H200_CONTEXT = 721_420_288
MEASURED_CONTEXT = "measured on the H200 (driver 580, CUDA 13.0, torch 2.11)"
ASSUMED_CONTEXT = ("the H200's, measured; a context depends on the driver, the CUDA version and the kernels "
                   "loaded, typically a few hundred MiB")
SPEC = "nvidia-smi memory.total as commonly reported for this model (not measured by sdvram)"
MEASURED = "measured: torch.cuda total_memory on the lent H200 (docs/measurements)"


@dataclass(frozen=True)
class GpuSpec:
    """A simulation target: a CUDA GPU, or the CPU (what ``profile --device cpu`` measures)."""

    key: str
    name: str
    compute_capability: tuple[int, int] | None  # None for the CPU
    memory: int | None  # bytes the driver reports; None for the CPU
    memory_source: str = SPEC
    context: int = H200_CONTEXT
    context_source: str = ASSUMED_CONTEXT

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
    def capacity(self) -> int | None:
        """What PyTorch's allocator can get: the card's memory less the CUDA context."""
        return None if self.memory is None else max(0, self.memory - self.context)

    def assumptions(self) -> list[str]:
        """What a simulation for this card takes from elsewhere than the card itself."""
        if not self.is_cuda:
            return []
        notes = [f"the CUDA context takes {self.context / MIB:,.0f} MiB ({self.context_source}).",
                 f"the card has {self.memory / MIB if self.memory else 0:,.0f} MiB ({self.memory_source})."]
        if self.sm != 90:
            notes.append("cuDNN convolution workspaces follow the rule measured on sm90 (H200, cuDNN 9.19); "
                         f"sm{self.sm} is not measured.")
        notes.append("the software stack measured on the H200: torch 2.11 with cuDNN 9.19 (cuDNN attention first on "
                     "sm90 and sm100).")
        return notes


def _card(key: str, name: str, cc: tuple[int, int], mib: int) -> GpuSpec:
    return GpuSpec(key, name, cc, mib * MIB)


GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        # consumer and workstation cards, 6 to 48 GB
        _card("rtx2060", "NVIDIA GeForce RTX 2060 6 GB", (7, 5), 6_144),
        _card("rtx2080ti", "NVIDIA GeForce RTX 2080 Ti 11 GB", (7, 5), 11_264),
        _card("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", (8, 6), 12_288),
        _card("rtx3060ti", "NVIDIA GeForce RTX 3060 Ti 8 GB", (8, 6), 8_192),
        _card("rtx3070", "NVIDIA GeForce RTX 3070 8 GB", (8, 6), 8_192),
        _card("rtx3080", "NVIDIA GeForce RTX 3080 10 GB", (8, 6), 10_240),
        _card("rtx3090", "NVIDIA GeForce RTX 3090 24 GB", (8, 6), 24_576),
        _card("rtx4060", "NVIDIA GeForce RTX 4060 8 GB", (8, 9), 8_188),
        _card("rtx4060ti16", "NVIDIA GeForce RTX 4060 Ti 16 GB", (8, 9), 16_380),
        _card("rtx4070", "NVIDIA GeForce RTX 4070 12 GB", (8, 9), 12_282),
        _card("rtx4080", "NVIDIA GeForce RTX 4080 16 GB", (8, 9), 16_376),
        _card("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", (8, 9), 24_564),
        _card("a4000", "NVIDIA RTX A4000 16 GB", (8, 6), 16_376),
        _card("a5000", "NVIDIA RTX A5000 24 GB", (8, 6), 24_564),
        _card("a6000", "NVIDIA RTX A6000 48 GB", (8, 6), 49_140),
        # data-centre cards
        _card("v100-16gb", "NVIDIA Tesla V100 16 GB", (7, 0), 16_160),
        _card("v100-32gb", "NVIDIA Tesla V100 32 GB", (7, 0), 32_510),
        _card("t4", "NVIDIA Tesla T4 16 GB", (7, 5), 15_360),
        _card("a10g", "NVIDIA A10G 24 GB", (8, 6), 23_028),
        _card("l4", "NVIDIA L4 24 GB", (8, 9), 23_034),
        _card("l40s", "NVIDIA L40S 48 GB", (8, 9), 46_068),
        _card("a100-40gb", "NVIDIA A100 40 GB", (8, 0), 40_960),
        _card("a100-80gb", "NVIDIA A100 80 GB", (8, 0), 81_920),
        _card("h100", "NVIDIA H100 80 GB HBM3", (9, 0), 81_559),
        GpuSpec("h200", "NVIDIA H200 141 GB HBM3e", (9, 0), 150_109_880_320, MEASURED, H200_CONTEXT,
                MEASURED_CONTEXT),
    )
}
CPU = GpuSpec("cpu", "CPU (what `sdvram profile --device cpu` measures)", None, None, "", 0, "")
DEFAULT_GPU = "h100"
ALIASES = {"a100": "a100-80gb", "3060": "rtx3060", "4090": "rtx4090", "h10080gb": "h100", "v100": "v100-16gb",
           "4060ti": "rtx4060ti16", "rtx4060ti": "rtx4060ti16"}
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gib|gb|g|mib|mb|m)?\s*$", re.IGNORECASE)
UNIT_BYTES = {"gib": GIB, "g": GIB, "gb": 10**9, "mib": MIB, "m": MIB, "mb": 10**6}
ARCH = re.compile(r"^\s*sm_?(\d{2,3})\s*$", re.IGNORECASE)  # the major version, then one digit of minor
KNOWN_SM = (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 103, 110, 120, 121)


def find_gpu(name: str) -> GpuSpec:
    """The GPU called ``name`` (case, spaces, dashes and a leading "nvidia"/"geforce" ignored), or an
    InputError that lists the known ones."""
    wanted = _norm(name)
    for spec in (*GPUS.values(), CPU):
        if wanted in (_norm(spec.key), _norm(spec.name)):
            return spec
    if wanted in ALIASES:
        return GPUS[ALIASES[wanted]]
    known = ", ".join([*GPUS, CPU.key])
    raise InputError("Unknown {gpu} '{got}'; known: {known}; or give {vram} (and {arch}) for another card.",
                     params=("gpu", "vram", "arch"), got=name, known=known)


def parse_vram(text: str) -> int:
    """A card's memory as typed: "8GB", "8 GiB", "12g" (GiB), "8192MiB", or a plain number of GiB."""
    match = SIZE.match(str(text))
    if match is None:
        raise InputError("{vram} must be a size such as 8GB, 12GiB or 8192MiB; got '{got}'.", params=("vram",),
                         got=text)
    value = float(match.group(1)) * UNIT_BYTES[(match.group(2) or "gib").lower()]
    if value < MIB:
        raise InputError("{vram} must be at least 1 MiB; got '{got}'.", params=("vram",), got=text)
    return int(value)


def parse_arch(text: str) -> tuple[int, int]:
    """A compute capability as typed: "sm86", "sm_90"."""
    match = ARCH.match(str(text))
    if match is None or int(match.group(1)) not in KNOWN_SM:
        raise InputError("{arch} must be a CUDA compute capability such as sm75, sm86 or sm90 (known: {known}); "
                         "got '{got}'.", params=("arch",), known=", ".join(f"sm{s}" for s in KNOWN_SM), got=text)
    return divmod(int(match.group(1)), 10)


def custom_gpu(vram: str, arch: str | None = None) -> GpuSpec:
    """A card given by its memory and compute capability (default sm86, the most common consumer Ampere)."""
    memory = parse_vram(vram)
    capability = parse_arch(arch) if arch is not None else (8, 6)
    return GpuSpec("custom", f"a {memory / GIB:.1f} GiB sm{capability[0]}{capability[1]} card", capability, memory,
                   "given by the user", H200_CONTEXT, ASSUMED_CONTEXT)


def spec_for_device(name: str, capability: tuple[int, int], memory: int) -> GpuSpec:
    """A spec for a GPU seen by torch (``profile`` simulates the card it runs on)."""
    return GpuSpec("measured", name, capability, memory, "torch.cuda total_memory of this card", H200_CONTEXT,
                   ASSUMED_CONTEXT)


def _norm(text: str) -> str:
    text = text.lower().replace("nvidia", "").replace("geforce", "").replace("tesla", "")
    return "".join(ch for ch in text if ch.isalnum())
