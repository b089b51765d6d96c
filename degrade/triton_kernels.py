"""Some of the engine's memory-bound steps as single-pass CUDA kernels, written in Triton.

Each computes what the torch code it stands in for computes, in one pass over the batch where
torch runs a dozen elementwise kernels, each reading and writing the whole batch:

* :func:`normal_field` is ``keyed.normal_field`` bit for bit: the same 32-bit hash of the same
  counters, the same table of normal quantiles. :func:`add_normal_noise` adds such a field to
  images without writing it (``noise.GaussianNoise``), to float rounding.
* :func:`colour_planes` and :func:`decoded_rgb` are the JPEG round trip's colour conversions and
  chroma re-sampling on each side of its DCT (``jpeg._colour_planes``, ``jpeg._decoded_rgb``).
* :func:`blend_levels` is ``turbulence.blend_levels`` to float rounding.

This module needs Triton (it comes with PyTorch's CUDA wheels on Linux); :func:`degrade.fused.kernels_for`
says whether it runs for a tensor. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors,
which is how the CPU-only test suite checks them.

On the H100, per 8,192 faces: noise 11.6 -> 1.7 ms, turbulence 52.9 -> 40.8 ms, JPEG 15.9 -> 6.9 ms
(``docs/benchmarks.md``, session 12).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import TypeVar

import torch
import triton
import triton.language as tl

from degrade.keyed import normal_quantiles

_BLOCK = 1024  # elements per program: one sample's slice of a plane

_Launcher = TypeVar("_Launcher", bound=Callable)


def _on_the_tensors_gpu(launch: _Launcher) -> _Launcher:
    """Run ``launch`` with the GPU of its first tensor argument (or of the first of a list) as the
    current device. Triton launches on the current device and its current stream, whatever device
    the tensors are on: on another GPU than cuda:0 a kernel would fail, or race the work queued
    on that GPU's stream. On a CPU (Triton's interpreter) it runs as it is."""
    @functools.wraps(launch)
    def on_device(first, *args, **kwargs):
        device = (first[0] if isinstance(first, list) else first).device
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            return launch(first, *args, **kwargs)
    return on_device


@triton.jit
def _normal_draws(seeds_ptr, shared_ptr, table_ptr, sample, element, inside, half, plane):
    """Draws ``element`` of ``sample``'s field, as ``keyed.normal_field`` makes them."""
    seed = tl.load(seeds_ptr + sample).to(tl.uint32, bitcast=True)
    # a shared sample repeats its first channel: every element takes the draw of its pixel there
    source = tl.where(tl.load(shared_ptr + sample) != 0, element % plane, element)
    # element e < half is the low 16 bits of hashed word e, element e >= half the high 16 bits of word e - half
    high = source >= half
    word = tl.where(high, source - half, source).to(tl.uint32)
    x = seed + word * 0x9E3779B9  # keyed.field_bits: seed plus the counter, wrapped to 32 bits
    x ^= x >> 16  # keyed.mix32 (lowbias32), logical shifts on uint32
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    quantile = tl.where(high, x >> 16, x & 0xFFFF)
    return tl.load(table_ptr + quantile, mask=inside)


@triton.jit
def _normal_field_kernel(seeds_ptr, shared_ptr, table_ptr, out_ptr, count, half, plane, BLOCK: tl.constexpr):
    sample = tl.program_id(0)
    element = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = element < count
    draws = _normal_draws(seeds_ptr, shared_ptr, table_ptr, sample, element, inside, half, plane)
    tl.store(out_ptr + sample.to(tl.int64) * count + element, draws, mask=inside)


@triton.jit
def _add_normal_noise_kernel(images_ptr, seeds_ptr, shared_ptr, table_ptr, sigma_ptr, out_ptr, count, half, plane,
                             BLOCK: tl.constexpr):
    sample = tl.program_id(0)
    element = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = element < count
    draws = _normal_draws(seeds_ptr, shared_ptr, table_ptr, sample, element, inside, half, plane)
    at = sample.to(tl.int64) * count + element
    noisy = tl.load(images_ptr + at, mask=inside) + draws * tl.load(sigma_ptr + sample)
    tl.store(out_ptr + at, tl.minimum(tl.maximum(noisy, 0), 1), mask=inside)


@_on_the_tensors_gpu
def normal_field(seeds: torch.Tensor, shape: tuple[int, ...], shared: torch.Tensor) -> torch.Tensor:
    """``keyed.normal_field``: (N,) int64 seeds and (N,) bool ``shared`` (samples whose channels,
    the first axis of ``shape``, all repeat the first) -> (N, *shape) float32 standard normal draws."""
    n, count = len(seeds), math.prod(shape)
    out = torch.empty(n, *shape, dtype=torch.float32, device=seeds.device)
    if n and count:
        grid = (n, triton.cdiv(count, _BLOCK))
        _normal_field_kernel[grid](seeds.to(torch.int32), shared.to(torch.uint8), normal_quantiles(seeds.device),
                                   out, count, (count + 1) // 2, math.prod(shape[1:]), BLOCK=_BLOCK)
    return out


@_on_the_tensors_gpu
def add_normal_noise(images: torch.Tensor, seeds: torch.Tensor, shared: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
    """``clamp(images + sigma * keyed.normal_field(seeds, shape, shared=shared), 0, 1)`` without making
    the field: (N, C, H, W) float32 images, (N,) int64 seeds, (N,) bool ``shared`` (grey noise,
    the same in every channel) and (N,) float32 ``sigma`` -> (N, C, H, W) float32 in [0, 1]."""
    n, count = len(images), images[0].numel() if len(images) else 0
    out = torch.empty_like(images)
    if n and count:
        grid = (n, triton.cdiv(count, _BLOCK))
        _add_normal_noise_kernel[grid](images.contiguous(), seeds.to(torch.int32), shared.to(torch.uint8),
                                       normal_quantiles(images.device), sigma.contiguous(), out, count,
                                       (count + 1) // 2, math.prod(images.shape[2:]), BLOCK=_BLOCK)
    return out


@triton.jit
def _blend_kernel(level0, level1, level2, level3, level4, position_ptr, out_ptr, plane,
                  CHANNELS: tl.constexpr, BLOCK: tl.constexpr):
    sample = tl.program_id(0).to(tl.int64)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pixel < plane
    position = tl.load(position_ptr + sample * plane + pixel, mask=inside)
    # hat weights max(0, 1 - |position - k|), as in turbulence.blend_levels
    weight0 = tl.maximum(1 - position, 0)
    weight1 = tl.maximum(1 - tl.abs(position - 1), 0)
    weight2 = tl.maximum(1 - tl.abs(position - 2), 0)
    weight3 = tl.maximum(1 - tl.abs(position - 3), 0)
    weight4 = tl.maximum(1 - tl.abs(position - 4), 0)
    for channel in tl.static_range(CHANNELS):
        at = (sample * CHANNELS + channel) * plane + pixel
        out = tl.load(level0 + at, mask=inside) * weight0
        out += tl.load(level1 + at, mask=inside) * weight1
        out += tl.load(level2 + at, mask=inside) * weight2
        out += tl.load(level3 + at, mask=inside) * weight3
        out += tl.load(level4 + at, mask=inside) * weight4
        tl.store(out_ptr + at, tl.minimum(tl.maximum(out, 0), 1), mask=inside)


@_on_the_tensors_gpu
def blend_levels(levels: list[torch.Tensor], position: torch.Tensor) -> torch.Tensor:
    """``turbulence.blend_levels`` for five levels: (N, C, H, W) images blurred at levels 0-4 and
    (N, 1, H, W) positions in [0, 4] -> (N, C, H, W) in [0, 1]."""
    if len(levels) != 5:
        raise ValueError(f"the blend kernel takes 5 levels, got {len(levels)}")
    levels = [level.contiguous() for level in levels]
    n, channels, height, width = levels[0].shape
    out = torch.empty_like(levels[0])
    if out.numel():
        grid = (n, triton.cdiv(height * width, _BLOCK))
        _blend_kernel[grid](*levels, position.contiguous(), out, height * width, CHANNELS=channels, BLOCK=_BLOCK)
    return out


@triton.jit
def _upsampled(plane_ptr, row, row_near, column, column_near, half_width):
    """Triangle ("fancy") 2x up-sampling of a chroma plane at output pixels whose sample is
    (row, column) and whose nearer neighbours are row_near and column_near: columns first, then rows."""
    here = tl.load(plane_ptr + row * half_width + column)
    across = tl.load(plane_ptr + row * half_width + column_near)
    below = tl.load(plane_ptr + row_near * half_width + column)
    diagonal = tl.load(plane_ptr + row_near * half_width + column_near)
    upper = here + 0.25 * (across - here)
    lower = below + 0.25 * (diagonal - below)
    return upper + 0.25 * (lower - upper)


@triton.jit
def _decoded_rgb_kernel(luma_ptr, chroma_ptr, out_ptr, height, width, padded_height, padded_width,
                        BLOCK: tl.constexpr):
    sample = tl.program_id(0).to(tl.int64)
    pixel = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    inside = pixel < height * width
    y = tl.where(inside, pixel // width, 0)
    x = tl.where(inside, pixel % width, 0)
    half_height, half_width = padded_height // 2, padded_width // 2
    row, column = y // 2, x // 2
    # an even output pixel leans on the sample before its own, an odd one on the sample after (edges replicated)
    row_near = tl.minimum(tl.maximum(row + 2 * (y % 2) - 1, 0), half_height - 1)
    column_near = tl.minimum(tl.maximum(column + 2 * (x % 2) - 1, 0), half_width - 1)
    chroma_area = half_height * half_width
    blue = _upsampled(chroma_ptr + sample * 2 * chroma_area, row, row_near, column, column_near, half_width)
    red = _upsampled(chroma_ptr + (sample * 2 + 1) * chroma_area, row, row_near, column, column_near, half_width)
    luma = tl.load(luma_ptr + sample * padded_height * padded_width + y * padded_width + x)
    out = out_ptr + sample * 3 * height * width + pixel
    # jpeg._CHROMA_TO_RGB, each level then rounded (halves to even), clamped to 8 bits and scaled to [0, 1]
    _store_level(out, luma + 1.402 * red, inside)
    _store_level(out + height * width, luma + -0.344136 * blue + -0.714136 * red, inside)
    _store_level(out + 2 * height * width, luma + 1.772 * blue, inside)


@triton.jit
def _round_half_even(value):
    """torch.round for values of a few thousand at most (where adding 0.5 is exact). Kernels that
    use it are compiled with ``enable_fp_fusion=False``: a product fused into the add or the
    subtraction here (an FMA) is not rounded first, and a level computed as a half then rounds the
    other way (the H100 gave 101 for 255 x (100.5 / 255), torch 100)."""
    nearest = tl.floor(value + 0.5)
    return tl.where((nearest - value == 0.5) & (nearest - 2 * tl.floor(nearest / 2) == 1), nearest - 1, nearest)


@triton.jit
def _store_level(out_ptr, level, inside):
    tl.store(out_ptr, tl.minimum(tl.maximum(_round_half_even(level), 0), 255) * (1 / 255), mask=inside)


@triton.jit
def _pixel_levels(images_ptr, y, x, height, width, inside):
    """8-bit RGB levels of the pixels at (y, x), edges replicated beyond (height, width)."""
    at = tl.minimum(y, height - 1) * width + tl.minimum(x, width - 1)
    red = _round_half_even(tl.load(images_ptr + at, mask=inside, other=0.0) * 255)
    green = _round_half_even(tl.load(images_ptr + height * width + at, mask=inside, other=0.0) * 255)
    blue = _round_half_even(tl.load(images_ptr + 2 * height * width + at, mask=inside, other=0.0) * 255)
    return red, green, blue


@triton.jit
def _store_luma(luma_ptr, red, green, blue, inside):
    tl.store(luma_ptr, red * 0.299 + green * 0.587 + blue * 0.114, mask=inside)  # jpeg._RGB_TO_LUMA


@triton.jit
def _colour_planes_kernel(images_ptr, luma_ptr, chroma_ptr, height, width, padded_height, padded_width,
                          BLOCK: tl.constexpr):
    sample = tl.program_id(0).to(tl.int64)
    quad = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    half_width = padded_width // 2
    chroma_area = (padded_height // 2) * half_width
    inside = quad < chroma_area
    y, x = 2 * (quad // half_width), 2 * (quad % half_width)
    images = images_ptr + sample * 3 * height * width
    red00, green00, blue00 = _pixel_levels(images, y, x, height, width, inside)
    red01, green01, blue01 = _pixel_levels(images, y, x + 1, height, width, inside)
    red10, green10, blue10 = _pixel_levels(images, y + 1, x, height, width, inside)
    red11, green11, blue11 = _pixel_levels(images, y + 1, x + 1, height, width, inside)
    luma = luma_ptr + sample * padded_height * padded_width + y * padded_width + x
    _store_luma(luma, red00, green00, blue00, inside)
    _store_luma(luma + 1, red01, green01, blue01, inside)
    _store_luma(luma + padded_width, red10, green10, blue10, inside)
    _store_luma(luma + padded_width + 1, red11, green11, blue11, inside)
    red = (red00 + red10) + (red01 + red11)
    green = (green00 + green10) + (green01 + green11)
    blue = (blue00 + blue10) + (blue01 + blue11)
    chroma = chroma_ptr + sample * 2 * chroma_area + quad  # jpeg._RGB_TO_CHROMA_OF_QUAD_SUM
    tl.store(chroma, red * (-0.168736 / 4) + green * (-0.331264 / 4) + blue * (0.5 / 4), mask=inside)
    tl.store(chroma + chroma_area, red * (0.5 / 4) + green * (-0.418688 / 4) + blue * (-0.081312 / 4), mask=inside)


@_on_the_tensors_gpu
def colour_planes(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``jpeg._colour_planes``: (N, 3, h, w) float32 in [0, 1] -> (N, 1, H, W) luma and
    (N, 2, H / 2, W / 2) chroma (Cb, Cr centred on 0, from 2x2 sums), H and W rounded up to
    multiples of 16 with the edges replicated."""
    n, _, height, width = images.shape
    padded_height, padded_width = height + -height % 16, width + -width % 16
    luma = images.new_empty(n, 1, padded_height, padded_width)
    chroma = images.new_empty(n, 2, padded_height // 2, padded_width // 2)
    if luma.numel():
        grid = (n, triton.cdiv(chroma[0, 0].numel(), _BLOCK))
        _colour_planes_kernel[grid](images.contiguous(), luma, chroma, height, width, padded_height, padded_width,
                                    BLOCK=_BLOCK, enable_fp_fusion=False)
    return luma, chroma


@_on_the_tensors_gpu
def decoded_rgb(luma: torch.Tensor, chroma: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``jpeg._decoded_rgb``: (N, 1, H, W) decoded luma and (N, 2, H / 2, W / 2) decoded chroma
    (Cb, Cr centred on 0), float32 -> (N, 3, height, width) RGB in [0, 1] on 8-bit levels."""
    n, _, padded_height, padded_width = luma.shape
    out = luma.new_empty(n, 3, height, width)
    if out.numel():
        grid = (n, triton.cdiv(height * width, _BLOCK))
        _decoded_rgb_kernel[grid](luma.contiguous(), chroma.contiguous(), out, height, width, padded_height,
                                  padded_width, BLOCK=_BLOCK, enable_fp_fusion=False)
    return out
