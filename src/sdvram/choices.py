"""The closed sets of choices sdvram understands, in one dependency-free module: the CLI parses flags into
them, the library validates with them and the renderers print them. Pure Python, no torch.

Each is a ``str`` Enum so that it reads back from JSON and from the command line as the same text.
"""

from __future__ import annotations

from enum import Enum


class DType(str, Enum):
    """The dtype of weights and activations."""

    float16 = "float16"
    bfloat16 = "bfloat16"
    float32 = "float32"

    @property
    def itemsize(self) -> int:
        """Bytes per value."""
        return 4 if self is DType.float32 else 2


class Weights(str, Enum):
    """Where `profile` gets the model weights (memory depends on shapes and dtypes only)."""

    pretrained = "pretrained"  # from_pretrained(--model): the hub or a local folder
    random = "random"  # built from the shipped configs, no download


class Architecture(str, Enum):
    """Which component configs of a pipeline family to build."""

    full = "full"  # the published configs of the family's model
    tiny = "tiny"  # a miniature with the same classes and 8x latent, for running on a CPU in seconds

    @classmethod
    def _missing_(cls, value: object) -> Architecture | None:
        # records made before the pipeline families called the published SD v1.5 configs "sd15"
        return cls.full if value == "sd15" else None


class Kernel(str, Enum):
    """Which scaled_dot_product_attention kernels may run (as ``torch.nn.attention.sdpa_kernel`` allows)."""

    auto = "auto"  # PyTorch's own choice for the card (attention.priority)
    cudnn = "cudnn"
    flash = "flash"
    efficient = "efficient"
    math = "math"


class Offload(str, Enum):
    """diffusers' CPU offload switches."""

    none = "none"
    model = "model"  # pipe.enable_model_cpu_offload(): one whole model on the GPU at a time
    sequential = "sequential"  # pipe.enable_sequential_cpu_offload(): one submodule's weights at a time


class Units(str, Enum):
    """How byte counts are printed."""

    gib = "gib"  # 1024^3, what nvidia-smi and torch.cuda report
    gb = "gb"  # 10^9, what vendors print on the box
    bytes = "bytes"
