"""JPEG compression at a per-sample quality, in plain torch (same code on CPU and CUDA).

Baseline JFIF as libjpeg does it: 8-bit input, YCbCr, 4:2:0 chroma averaging, 8x8 DCT-II,
the standard luminance / chrominance tables scaled by the IJG quality formula, rounding,
then decoding with triangle ("fancy") chroma up-sampling. Entropy coding is lossless and so
left out. Every sample has its own quantisation tables, so one batch mixes qualities.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from degrade.keyed import KeyedRandom
from degrade.ops.base import Op, Params, as_range

_LUMA_TABLE = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
]
_CHROMA_TABLE = [
    17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99,
    24, 26, 56, 99, 99, 99, 99, 99, 47, 66, 99, 99, 99, 99, 99, 99,
] + [99] * 32

_RGB_TO_YCBCR = [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
_YCBCR_TO_RGB = [[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]]


@functools.lru_cache(maxsize=8)
def _dct_2d(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Orthonormal 8x8 DCT-II of row-major flattened blocks as one (64, 64) matrix: kron(D, D).

    One (blocks, 64) x (64, 64) product runs as a single GEMM, far faster on a CPU than
    batches of 8x8 products."""
    k = torch.arange(8, dtype=torch.float64)[:, None]
    n = torch.arange(8, dtype=torch.float64)[None, :]
    matrix = torch.cos((2 * n + 1) * k * math.pi / 16) * math.sqrt(2 / 8)
    matrix[0] /= math.sqrt(2)
    return torch.kron(matrix, matrix).to(device=device, dtype=dtype)


def quantisation_tables(quality: torch.Tensor) -> torch.Tensor:
    """IJG-scaled tables: (N,) qualities in [1, 100] -> (N, 2, 8, 8) (luma, chroma), float64."""
    quality = quality.to(torch.float64).clamp(1, 100)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality)
    base = torch.tensor([_LUMA_TABLE, _CHROMA_TABLE], dtype=torch.float64, device=quality.device).view(1, 2, 8, 8)
    return torch.floor((base * scale.view(-1, 1, 1, 1) + 50) / 100).clamp(1, 255)


def _blocks(plane: torch.Tensor) -> torch.Tensor:
    """(N, H, W) -> (N, H/8 * W/8, 64): row-major flattened 8x8 blocks."""
    n, h, w = plane.shape
    return plane.view(n, h // 8, 8, w // 8, 8).transpose(2, 3).reshape(n, -1, 64)


def _unblocks(blocks: torch.Tensor, h: int, w: int) -> torch.Tensor:
    n = blocks.shape[0]
    return blocks.view(n, h // 8, w // 8, 8, 8).transpose(2, 3).reshape(n, h, w)


def _round_trip_plane(plane: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, DCT, quantise, dequantise, inverse DCT: (N, H, W) in 0..255, table (N, 8, 8)."""
    dct = _dct_2d(plane.device, plane.dtype)
    table = table.to(plane.dtype).reshape(-1, 1, 64)
    coefficients = _blocks(plane - 128) @ dct.T
    restored = (torch.round(coefficients / table) * table) @ dct
    return _unblocks(restored, *plane.shape[1:]) + 128


def jpeg_round_trip(images: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Encode and decode as baseline 4:2:0 JPEG.

    Args:
        images: (N, 3, H, W) float in [0, 1], any H, W (edges are replicated to whole MCUs).
        quality: (N,) qualities in [1, 100].
    Returns:
        (N, 3, H, W) float in [0, 1], on 8-bit levels.
    """
    n, _, h, w = images.shape
    pad_h, pad_w = -h % 16, -w % 16
    pixels = torch.round(images * 255)
    pixels = F.pad(pixels, (0, pad_w, 0, pad_h), mode="replicate")
    to_ycbcr = torch.tensor(_RGB_TO_YCBCR, device=images.device, dtype=images.dtype)
    ycbcr = torch.einsum("ij,njhw->nihw", to_ycbcr, pixels)
    ycbcr[:, 1:] += 128
    tables = quantisation_tables(quality.to(images.device))
    luma = _round_trip_plane(ycbcr[:, 0], tables[:, 0])
    chroma = F.avg_pool2d(ycbcr[:, 1:], 2)
    chroma = _round_trip_plane(chroma.flatten(0, 1), tables[:, 1].repeat_interleave(2, dim=0)).view_as(chroma)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False) - 128
    decoded = torch.cat([luma[:, None], chroma], dim=1)
    to_rgb = torch.tensor(_YCBCR_TO_RGB, device=images.device, dtype=images.dtype)
    rgb = torch.einsum("ij,njhw->nihw", to_rgb, decoded)
    return torch.round(rgb[:, :, :h, :w]).clamp(0, 255) / 255


@dataclasses.dataclass
class Jpeg(Op):
    """JPEG compression. Config: ``quality`` [low, high] in [1, 100]. Params: quality (int64)."""

    name = "jpeg"
    quality: list[float] = dataclasses.field(default_factory=lambda: [30.0, 95.0])

    def validate(self) -> None:
        self.quality = list(as_range("quality", self.quality, 1, 100))

    def draw(self, rng: KeyedRandom) -> Params:
        lo, hi = self.quality
        return {"quality": rng.integers(int(lo), int(hi))}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        return jpeg_round_trip(images, params["quality"])
