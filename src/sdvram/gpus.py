"""GPUs that ``sdvram simulate --gpu`` knows: compute capability (which attention kernels PyTorch can run)
and memory (does it fit?). Pure Python.

``memory`` is nvidia-smi's ``memory.total`` as commonly reported for each card (MiB, so binary), which is
already less than the marketed size where ECC or the driver keeps some back. Usable memory is lower still:
the CUDA context takes a few hundred MiB before torch allocates anything (see "not modelled").
"""

from __future__ import annotations

from dataclasses import dataclass

from sdvram.errors import InputError

MIB = 1024**2


@dataclass(frozen=True)
class GpuSpec:
    """A simulation target: a CUDA GPU, or the CPU (what ``profile --device cpu`` measures)."""

    key: str
    name: str
    compute_capability: tuple[int, int] | None  # None for the CPU
    memory: int | None  # bytes; None for the CPU

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


GPUS: dict[str, GpuSpec] = {
    spec.key: spec
    for spec in (
        GpuSpec("t4", "NVIDIA Tesla T4 16 GB", (7, 5), 15_360 * MIB),
        GpuSpec("rtx3060", "NVIDIA GeForce RTX 3060 12 GB", (8, 6), 12_288 * MIB),
        GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090 24 GB", (8, 9), 24_564 * MIB),
        GpuSpec("a10g", "NVIDIA A10G 24 GB", (8, 6), 23_028 * MIB),
        GpuSpec("l4", "NVIDIA L4 24 GB", (8, 9), 23_034 * MIB),
        GpuSpec("a100-40gb", "NVIDIA A100 40 GB", (8, 0), 40_960 * MIB),
        GpuSpec("a100-80gb", "NVIDIA A100 80 GB", (8, 0), 81_920 * MIB),
        GpuSpec("h100", "NVIDIA H100 80 GB HBM3", (9, 0), 81_559 * MIB),
        GpuSpec("h200", "NVIDIA H200 141 GB HBM3e", (9, 0), 143_771 * MIB),
    )
}
CPU = GpuSpec("cpu", "CPU (what `sdvram profile --device cpu` measures)", None, None)
DEFAULT_GPU = "h100"


def find_gpu(name: str) -> GpuSpec:
    """The GPU called ``name`` (case, spaces, dashes and a leading "nvidia"/"rtx" ignored), or an InputError
    that lists the known ones."""
    wanted = _norm(name)
    for spec in (*GPUS.values(), CPU):
        if wanted in (_norm(spec.key), _norm(spec.name)):
            return spec
    aliases = {"a100": "a100-80gb", "3060": "rtx3060", "4090": "rtx4090", "h10080gb": "h100"}
    if wanted in aliases:
        return GPUS[aliases[wanted]]
    known = ", ".join([*GPUS, CPU.key])
    raise InputError(f"Unknown GPU '{name}'; known: {known}.")


def spec_for_device(name: str, capability: tuple[int, int], memory: int) -> GpuSpec:
    """A spec for a GPU seen by torch (``profile`` simulates the card it runs on)."""
    return GpuSpec("measured", name, capability, memory)


def _norm(text: str) -> str:
    text = text.lower().replace("nvidia", "").replace("geforce", "").replace("tesla", "")
    return "".join(ch for ch in text if ch.isalnum())
