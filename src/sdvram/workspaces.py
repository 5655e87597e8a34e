"""What CUDA libraries allocate through PyTorch's caching allocator beside the tensors: cuBLAS's and
cuBLASLt's workspaces, kept from the first matrix multiply on, and the workspace cuDNN holds while a
convolution runs. Pure Python: rules and their evidence, used by the simulation.

cuBLAS (``aten/src/ATen/cuda/CublasHandlePool.cpp``, ``parseChosenWorkspaceSize``): the first cuBLAS call on
a handle and stream allocates its workspace through the caching allocator and keeps it; the default
``CUBLAS_WORKSPACE_CONFIG`` is ``:4096:8`` (32 MiB) on sm90 and ``:4096:2:16:8`` (2 x 4 MiB + 8 x 16 KiB)
elsewhere. cuBLASLt, which PyTorch uses for 16-bit ``addmm`` with a bias (every ``nn.Linear``), keeps a
workspace of its own, 1 MiB by default (``CUBLASLT_WORKSPACE_SIZE``, in KiB). The H200 trace of a whole
pipeline (``tests/data/trace-512-steps10.pkl.gz``) shows both: 33,554,432 and then 1,048,576 bytes allocated
right after the output of the first ``nn.Linear`` of the text encoder, and never freed.

cuDNN (PyTorch's ``cudnn/Conv_v8.cpp`` with ``torch.backends.cudnn.benchmark`` off): the heuristics pick an
engine and PyTorch allocates the workspace that engine asks for through the caching allocator after the
output, and frees it when the convolution returns. NVIDIA's tensor-core convolutions work in NHWC; on NCHW
tensors cuDNN's engines transform the input, the output and the filters into the workspace. The rule
below, ``conv_workspace``, is that transform, derived from 972 convolution calls measured on an H200
(sm90, cuDNN 9.19, fp16, ``docs/measurements/h200-2026-11-26/convs.jsonl``; fp32, bf16 and batch-2 tables
beside it) and
from the exact requests in the two allocator traces in ``tests/data/``; ``docs/simulate.md`` states the
evidence. It is measured on sm90 only; for other GPUs the simulation applies it and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
SM90 = 90

# CublasHandlePool.cpp, parseChosenWorkspaceSize: ":4096:8" on sm90 (measured on the H200: 33,554,432 B),
# ":4096:2:16:8" elsewhere (2 x 4096 KiB + 8 x 16 KiB).
CUBLAS_WORKSPACE_SM90 = 4096 * 1024 * 8
CUBLAS_WORKSPACE_DEFAULT = 4096 * 1024 * 2 + 16 * 1024 * 8
CUBLASLT_WORKSPACE = 1024 * 1024  # CUBLASLT_WORKSPACE_SIZE default, 1024 KiB (measured on the H200)

CHANNEL_ALIGNMENT = 8  # tensor cores take channels in 16-byte groups: 8 16-bit values, cuDNN pads to a multiple
ALIGNMENT_BYTES = 16  # ... and 4 fp32 values (TF32): the fp32 table's 3-channel conv_out is padded to 4
# The bytes cuDNN's transforming engines ask for beyond the three NHWC copies: 147 or 16 in the traces'
# exact requests (an engine-dependent scratch). After the allocator's 512-byte rounding both cost one block.
TRANSFORM_SLACK = 147
# Convolutions with fewer than 8 input channels (the RGB/latent inputs: the VAE's and UNet's conv_in) ran
# without a workspace in every batch-1 call measured, and with the transform from batches of 2 at 18,432
# output pixels (N x H x W) and more (the UNet's conv_in from 768 x 768 images on, the VAE decoder's at
# batch 2), and never below that (the UNet's conv_in at 512 x 512 and smaller).
NARROW_INPUT_MIN_BATCH = 2
NARROW_INPUT_MIN_PIXELS = 18_432
# The VAE encoder's downsamplers (stride 2, no padding, on an input F.pad made one pixel larger) ran, in the
# traced 512 x 512 pipeline, an engine that transforms the filters alone (requests of exactly the filter
# bytes, and 131 bytes beside them); with the full transform the 2048 x 2048 run's peak reserved comes out
# 7.8% above the one measured, with the filters alone 0.1% below. The isolated calls of convs.jsonl (each
# shape's second call) chose the full transform for the same shapes: cuDNN's heuristics differ there, and
# the rule follows the pipeline, which is what a user runs.
# From a batch of 2, the VAE decoder's upsampler convolutions (input straight from F.interpolate, 512 or 256
# channels) transformed the filters alone (convs-fp16-batch2.jsonl: 4,719,104 and 1,311,232 bytes where the
# transform would be 155 MB to 1.2 GB, while every other convolution of that decode kept it); the UNet's
# upsamplers, 640 and 1280 channels, kept the transform at their batch of 2. With this the 1024 x 1024 batch-2
# pipeline run is predicted within 0.1% of its measured peak, without it 11% above.
UPSAMPLED_MIN_BATCH = 2
UPSAMPLED_MAX_CHANNELS = 512


def cublas_workspaces(sm: int) -> tuple[int, int]:
    """(cuBLAS, cuBLASLt) workspace bytes for a GPU of compute capability ``sm`` (90 for sm90)."""
    return (CUBLAS_WORKSPACE_SM90 if sm == SM90 else CUBLAS_WORKSPACE_DEFAULT), CUBLASLT_WORKSPACE


@dataclass(frozen=True)
class Conv:
    """One ``aten.convolution`` call as the simulation sees it (NCHW, 2-d)."""

    batch: int
    in_channels: int
    in_height: int
    in_width: int
    out_channels: int
    out_height: int
    out_width: int
    kernel: tuple[int, int]
    groups: int
    itemsize: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (1, 1)
    after_upsample: bool = False  # its input is the output of a nearest-neighbour upsample


def pad(channels: int, itemsize: int = 2) -> int:
    """Channels rounded up to the tensor cores' alignment: 16 bytes of them."""
    align = ALIGNMENT_BYTES // itemsize
    return -(-channels // align) * align


def conv_workspace(conv: Conv) -> int:
    """Bytes cuDNN asks the caching allocator for while ``conv`` runs (0: none).

    - A 1 x 1 convolution is a GEMM on the NCHW data: no transform (measured: at most 1 MiB, allocator
      noise, in every 1 x 1 call).
    - A grouped convolution is not modelled (SD v1.5 has none): 0.
    - Fewer than 8 input channels: no workspace, except from batch 2 at 18,432 output pixels and more,
      where the input, output and filters are copied unpadded.
    - Stride 2 without padding (the VAE encoder's downsamplers): the filters alone.
    - From a batch of 2, a convolution of at most 512 channels right after a nearest-neighbour upsample (the
      VAE decoder's upsamplers): the filters alone.
    - Otherwise the NHWC copies of the input, of the output and of the filters, channels padded to 16
      bytes (8 16-bit values, 4 fp32), plus the engine's slack.
    """
    kh, kw = conv.kernel
    if kh * kw == 1 or conv.groups != 1:
        return 0
    n, size = conv.batch, conv.itemsize
    filters_only = size * conv.out_channels * conv.in_channels * kh * kw
    if conv.stride != (1, 1) and conv.padding == (0, 0) and conv.in_channels >= CHANNEL_ALIGNMENT:
        return filters_only
    if conv.after_upsample and n >= UPSAMPLED_MIN_BATCH and conv.in_channels <= UPSAMPLED_MAX_CHANNELS:
        return filters_only
    pixels_in = conv.in_height * conv.in_width
    pixels_out = conv.out_height * conv.out_width
    if conv.in_channels < CHANNEL_ALIGNMENT:
        if n < NARROW_INPUT_MIN_BATCH or n * pixels_out < NARROW_INPUT_MIN_PIXELS:
            return 0
        return size * (n * conv.in_channels * pixels_in + n * conv.out_channels * pixels_out
                       + conv.out_channels * conv.in_channels * kh * kw)
    data = n * conv.in_channels * pixels_in + n * pad(conv.out_channels, size) * pixels_out
    filters = pad(conv.out_channels, size) * pad(conv.in_channels, size) * kh * kw
    return size * (data + filters) + TRANSFORM_SLACK
