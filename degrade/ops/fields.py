"""Smooth random fields by FFT filtering of keyed white noise, and warping by them."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from degrade.keyed import normal_field
from degrade.ops.resize import resample_matrix


def frequency_radius(height: int, width: int, device: torch.device) -> torch.Tensor:
    """|κ| in cycles per pixel on the (height, width) FFT grid, (height, width) float64."""
    ky = torch.fft.fftfreq(height, device=device, dtype=torch.float64)
    kx = torch.fft.fftfreq(width, device=device, dtype=torch.float64)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def filtered_field(
    seeds: torch.Tensor,
    height: int,
    width: int,
    power: Callable[[torch.Tensor], torch.Tensor],
    variance: torch.Tensor,
    channels: int = 1,
    step: int = 1,
) -> torch.Tensor:
    """Stationary Gaussian fields with power spectrum ∝ ``power(|κ|)`` and a set point variance.

    White noise from each seed is filtered on a grid twice the requested size (so the
    FFT's periodic wrap-around does not correlate opposite edges) and cropped. The filter is
    scaled so that the expected per-pixel variance is exactly ``variance``. With ``step`` > 1
    the field is drawn on a grid ``step`` pixels apart and up-sampled bicubically: step² times
    fewer draws and FFT points, for fields whose spectrum is negligible above 1 / (4 step)
    cycles per pixel (the callers choose step from their correlation length; variance and
    correlations at lags 1-32 px then match the full grid's within 0.03, tested).

    Args:
        seeds: (N,) int64 keyed seeds.
        height, width: field size in pixels.
        power: spectral density as a function of |κ| (cycles/pixel), evaluated on a float64 grid.
        variance: (N,) expected per-pixel variance of each field.
        channels: independent fields per sample (e.g. 2 for x and y displacements).
        step: spacing in pixels of the grid the field is drawn on.
    Returns:
        (N, channels, height, width) float32.
    """
    rows, cols = -(-height // step), -(-width // step)
    spectrum = power(frequency_radius(2 * rows, 2 * cols, seeds.device) / step)
    gain = torch.sqrt(spectrum / spectrum.mean()).to(torch.float32)
    noise = normal_field(seeds, (channels, 2 * rows, 2 * cols))
    field = torch.fft.ifft2(torch.fft.fft2(noise, norm="ortho") * gain, norm="ortho").real
    if step > 1:  # one more coarse sample than needed, so that the last pixels interpolate
        up_rows = _bicubic_up(rows + 1, step, height, seeds.device)
        up_cols = _bicubic_up(cols + 1, step, width, seeds.device)
        field = up_rows @ field[:, :, :rows + 1, :cols + 1] @ up_cols.T
    return field[:, :, :height, :width] * variance.to(torch.float32).sqrt().view(-1, 1, 1, 1)


@functools.lru_cache(maxsize=16)
def _bicubic_up(samples: int, step: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, samples) float32: bicubic up-sampling by ``step`` (half-pixel centres, edges
    replicated, as ``F.interpolate``), its first ``size`` rows. As a matrix product it runs
    3x faster on a CPU than ``F.interpolate(mode="bicubic")``, to float rounding the same."""
    return resample_matrix(samples, samples * step, "bicubic")[:size].to(device=device, dtype=torch.float32)


def warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Resample images at x + dx, y + dy (bilinear, reflected border).

    Args:
        images: (N, C, H, W) float.
        displacement: (N, 2, H, W) in pixels, channel 0 = dx (columns), 1 = dy (rows).
    """
    n, _, h, w = images.shape
    ys = torch.arange(h, device=images.device, dtype=images.dtype)
    xs = torch.arange(w, device=images.device, dtype=images.dtype)
    base_y, base_x = torch.meshgrid(ys, xs, indexing="ij")
    dx, dy = displacement.to(images.dtype).unbind(1)
    grid_x = (2 * (base_x + dx) + 1) / w - 1
    grid_y = (2 * (base_y + dy) + 1) / h - 1
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
