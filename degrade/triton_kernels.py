"""Two of the engine's memory-bound steps as single-pass CUDA kernels, written in Triton.

Each computes what the torch code it stands in for computes, in one pass over the batch where
torch runs a dozen elementwise kernels, each reading and writing the whole batch:

* :func:`normal_field` is ``keyed.normal_field`` bit for bit: the same 32-bit hash of the same
  counters, the same table of normal quantiles. :func:`add_normal_noise` adds such a field to
  images without writing it (``noise.GaussianNoise``), to float rounding.
* :func:`blend_levels` is ``turbulence.blend_levels`` to float rounding.

This module needs Triton (it comes with PyTorch's CUDA wheels on Linux); :func:`degrade.fused.kernels_for`
says whether it runs for a tensor. With ``TRITON_INTERPRET=1`` the kernels run on CPU tensors,
which is how the CPU-only test suite checks them.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from degrade.keyed import normal_quantiles

_BLOCK = 1024  # elements per program: one sample's slice of a plane


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
