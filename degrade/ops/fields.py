"""Smooth random fields by FFT filtering of keyed white noise, and warping by them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from degrade.keyed import normal_field


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
) -> torch.Tensor:
    """Stationary Gaussian fields with power spectrum ∝ ``power(|κ|)`` and a set point variance.

    White noise from each seed is filtered on a grid twice the requested size (so the
    FFT's periodic wrap-around does not correlate opposite edges) and cropped. The filter is
    scaled so that the expected per-pixel variance is exactly ``variance``.

    Args:
        seeds: (N,) int64 keyed seeds.
        height, width: field size in pixels.
        power: spectral density as a function of |κ| (cycles/pixel), evaluated on a float64 grid.
        variance: (N,) expected per-pixel variance of each field.
        channels: independent fields per sample (e.g. 2 for x and y displacements).
    Returns:
        (N, channels, height, width) float32.
    """
    grid_h, grid_w = 2 * height, 2 * width
    spectrum = power(frequency_radius(grid_h, grid_w, seeds.device))
    gain = torch.sqrt(spectrum / spectrum.mean()).to(torch.float32)
    noise = normal_field(seeds, (channels, grid_h, grid_w))
    field = torch.fft.ifft2(torch.fft.fft2(noise, norm="ortho") * gain, norm="ortho").real
    field = field * variance.to(torch.float32).sqrt().view(-1, 1, 1, 1)
    return field[:, :, :height, :width]


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
