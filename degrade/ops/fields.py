"""Smooth random fields by FFT filtering of keyed white noise, and warping by them."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F

from degrade.keyed import constant, normal_field
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

    White noise from each seed is filtered on a grid at least twice the requested size (so the
    FFT's periodic wrap-around does not correlate opposite edges; see :func:`fft_size`) and
    cropped; the FFTs are real-to-complex and back, half the work of complex ones. The filter is
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
    grid = fft_size(2 * rows), fft_size(2 * cols)
    noise = normal_field(seeds, (channels, *grid))
    half = torch.fft.rfft2(noise, norm="ortho") * _half_spectrum_gain(power, grid, step, seeds.device)
    field = torch.fft.irfft2(half, s=grid, norm="ortho")
    if step > 1:  # one more coarse sample than needed, so that the last pixels interpolate
        up_rows = _bicubic_up(rows + 1, step, height, seeds.device)
        up_cols = _bicubic_up(cols + 1, step, width, seeds.device)
        field = up_rows @ field[:, :, :rows + 1, :cols + 1] @ up_cols.T
    return field[:, :, :height, :width] * variance.to(torch.float32).sqrt().view(-1, 1, 1, 1)


@functools.lru_cache(maxsize=16)
def _half_spectrum_gain(power: Callable[[torch.Tensor], torch.Tensor], grid: tuple[int, int], step: int,
                        device: torch.device) -> torch.Tensor:
    """(grid[0], grid[1] // 2 + 1) float32: the filter of :func:`filtered_field` at the frequencies
    rfft2 keeps, scaled to a mean power of 1. The gain is real and even in each frequency, so the
    filtered field is real and that half spectrum is all irfft2 needs. Made once per power
    function, grid and device: 117 us per call on a CPU core (two per turbulence chunk), and on a
    GPU a dozen small kernels and a host sync (the power's lowest non-zero radius). Every caller
    gets the same tensor: read only."""
    spectrum = power(frequency_radius(*grid, device) / step)
    gain = torch.sqrt(spectrum / spectrum.mean()).to(torch.float32)
    return gain[:, :grid[1] // 2 + 1]


def fft_size(minimum: int) -> int:
    """The smallest size >= ``minimum`` with no prime factor above 7. FFTs of such sizes are fast;
    a large prime factor is not: a 46-point grid (2 x 23) took 3x the time of a 48-point one
    on a CPU core (pocketfft; cuFFT likewise favours such sizes)."""
    size = minimum
    while True:
        rest = size
        for prime in (2, 3, 5, 7):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


@functools.lru_cache(maxsize=16)
def _bicubic_up(samples: int, step: int, size: int, device: torch.device) -> torch.Tensor:
    """(size, samples) float32: bicubic up-sampling by ``step`` (half-pixel centres, edges
    replicated, as ``F.interpolate``), its first ``size`` rows. As a matrix product it runs
    3x faster on a CPU than ``F.interpolate(mode="bicubic")``, to float rounding the same."""
    return resample_matrix(samples, samples * step, "bicubic")[:size].to(device=device, dtype=torch.float32)


@functools.lru_cache(maxsize=16)
def _pixel_centres(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(height, width, 2): each pixel centre's (x, y) in grid_sample's [-1, 1] coordinates."""
    ys = (2 * torch.arange(height, device=device, dtype=dtype) + 1) / height - 1
    xs = (2 * torch.arange(width, device=device, dtype=dtype) + 1) / width - 1
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def warp(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Resample images at x + dx, y + dy (bilinear, reflected border).

    The sampling grid is the pixel centres plus the displacements scaled to [-1, 1] units, one
    multiply-add (100 against 140-160 us per face on one CPU core for the whole warp, when the
    grid was made coordinate by coordinate and stacked).

    Args:
        images: (N, C, H, W) float.
        displacement: (N, 2, H, W) in pixels, channel 0 = dx (columns), 1 = dy (rows).
    """
    _, _, h, w = images.shape
    scale = constant((2 / w, 2 / h), images.device, images.dtype)
    grid = torch.addcmul(_pixel_centres(h, w, images.device, images.dtype),
                         displacement.to(images.dtype).permute(0, 2, 3, 1), scale)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
