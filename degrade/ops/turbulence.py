"""Atmospheric turbulence from Kolmogorov statistics: random tilt warp plus varying blur.

Written from the published statistics (Fried 1965/1966; Noll 1976), not from any simulator:

* **Tilt.** The wavefront tilt over an aperture D has, per axis, the angular variance
  ``0.182 (λ/D)² (D/r0)^{5/3}`` (Z-tilt). With ``sampling`` pixels per λ/D (2 = Nyquist) the
  displacement variance is ``0.182 · sampling² · (D/r0)^{5/3}`` px², i.e. a standard deviation
  of about ``0.85 (D/r0)^{5/6}`` px at Nyquist. Its spatial structure is that of the phase
  gradient averaged over the aperture: power ∝ κ^{-5/3} · [2 J1(πκℓ)/(πκℓ)]², where ℓ is the
  aperture footprint in image pixels (the isoplanatic patch, ``patch``). The field is drawn
  by FFT filtering of keyed white noise, x and y independent, and applied with grid_sample.
* **Blur.** The tilt-removed phase variance is ``0.134 (D/r0)^{5/3}`` rad² (Noll). Its Strehl
  ratio exp(−σ²) sets a Gaussian short-exposure PSF of width ``σ_d · exp(σ²/2)`` with the
  diffraction core σ_d = 0.42 λ/D, i.e. an extra blur ``σ_d · sqrt(exp(σ²) − 1)`` px, at most
  ``MAX_BLUR_SIGMA``. The residual variance varies across the field by a log-normal factor
  (mean 1) drawn as a smooth field with the same patch size; the image is blurred at a few
  levels and blended per pixel.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable, Iterator

import torch

from degrade.fused import kernels_for
from degrade.keyed import KeyedRandom
from degrade.ops.base import ConfigError, Op, Params, as_range, per_sample
from degrade.ops.blur import GaussianBlur
from degrade.ops.fields import filtered_field, warp

TILT_COEFFICIENT = 0.182
RESIDUAL_PHASE_COEFFICIENT = 0.134
DIFFRACTION_SIGMA = 0.42  # Gaussian fit to the Airy core, in units of λ/D
BLUR_LEVELS = 5
BLUR_VARIATION = 0.5  # std of the log of the local residual-variance factor
# The widest local blur, in px. The short-exposure model's width grows as exp(σ²/2), which holds
# for weak to moderate turbulence and runs away beyond: at D/r0 = 4 a patch 4 sd above the mean
# would take 123 px. A Gaussian of 10 px leaves no facial detail on a 112 px face, and keeps the
# widest level's kernel at 61 taps. For D/r0 <= 2 (CATFace) no patch reaches it.
MAX_BLUR_SIGMA = 10.0


def tilt_variance(strength: torch.Tensor | float, sampling: float) -> torch.Tensor | float:
    """One-axis tilt variance in px² for D/r0 = ``strength`` at ``sampling`` px per λ/D."""
    return TILT_COEFFICIENT * sampling ** 2 * strength ** (5 / 3)


def residual_phase_variance(strength: torch.Tensor | float) -> torch.Tensor | float:
    """Tilt-removed phase variance in rad² for D/r0 = ``strength``."""
    return RESIDUAL_PHASE_COEFFICIENT * strength ** (5 / 3)


@functools.lru_cache(maxsize=16)
def aperture_averaged_gradient_power(patch: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Spectral shape of the tilt field: κ^{-5/3} · Airy(κ · patch)², DC set to the lowest bin.
    One function per patch size, so that the fields' filters made from it are cached."""

    def power(radius: torch.Tensor) -> torch.Tensor:
        lowest = radius[radius > 0].min()
        radius = radius.clamp(min=lowest.item())
        argument = math.pi * radius * patch
        airy = 2 * torch.special.bessel_j1(argument) / argument
        return radius ** (-5 / 3) * airy ** 2

    return power


def blend_levels(levels: Iterable[torch.Tensor], position: torch.Tensor) -> torch.Tensor:
    """Per-pixel linear interpolation between blur levels: each pixel takes the two levels around
    its own position, level k with the hat weight max(0, 1 - |position - k|).

    Args:
        levels: (N, C, H, W) images, the same image blurred at levels 0, 1, ... (0: not at all).
            An iterator is consumed one level at a time, so on a CPU only one is held: with all
            five held, turbulence took 1,970-2,060 against 1,380-1,890 us per face on one core of
            the 2-core machine in chunks of 16 (their float32 levels outgrow the cache).
        position: (N, 1, H, W) each pixel's level, in [0, number of levels - 1].
    Returns:
        (N, C, H, W) in [0, 1].

    On a GPU with Triton, one kernel reads every level once (``triton_kernels.blend_levels``); the
    torch code below reads and writes the whole batch twice per level.
    """
    kernels = kernels_for(position)
    if kernels is not None:
        levels = list(levels)  # the kernel reads them all at once
        if len(levels) == 5:
            return kernels.blend_levels(levels, position)
    levels = iter(levels)
    out = next(levels) * (1 - position).clamp(min=0)
    for k, level in enumerate(levels, 1):
        out.addcmul_(level, (1 - (position - k).abs()).clamp(min=0))
    return out.clamp_(0, 1)


@dataclasses.dataclass
class Turbulence(Op):
    """Kolmogorov turbulence: tilt warp and spatially varying blur.

    Config:
        strength: D/r0 range [low, high] (CATFace: [0.25, 2]).
        sampling: pixels per λ/D (2 = Nyquist sampling).
        patch: isoplanatic patch (aperture footprint) in pixels, the tilt correlation length.
        blur: add the residual-phase blur (False: tilt only).
    Params: strength (D/r0), seed (int64, tilt field), blur_seed (int64, blur variation).
    """

    name = "turbulence"
    strength: list[float] = dataclasses.field(default_factory=lambda: [0.25, 2.0])
    sampling: float = 2.0
    patch: float = 16.0
    blur: bool = True

    def validate(self) -> None:
        self.strength = list(as_range("strength", self.strength, 0.0, 20.0))
        if not isinstance(self.sampling, (int, float)) or not 0.25 <= self.sampling <= 16:
            raise ConfigError("sampling", f"expected pixels per λ/D in [0.25, 16], got {self.sampling!r}")
        if not isinstance(self.patch, (int, float)) or not 1 <= self.patch <= 1024:
            raise ConfigError("patch", f"expected a patch size in pixels in [1, 1024], got {self.patch!r}")
        if not isinstance(self.blur, bool):
            raise ConfigError("blur", f"expected true or false, got {self.blur!r}")

    def draw(self, rng: KeyedRandom) -> Params:
        return {"strength": rng.uniform(*self.strength), "seed": rng.seeds(), "blur_seed": rng.seeds()}

    @property
    def field_step(self) -> int:
        """Grid spacing the fields are drawn on: the Airy factor of their spectrum has its first
        zero at 1.22 / patch cycles per pixel, so a grid patch / 4 apart keeps it below half the
        grid's Nyquist frequency (see ``filtered_field``)."""
        return max(1, int(self.patch // 4))

    def tilt_field(self, params: Params, height: int, width: int) -> torch.Tensor:
        """(N, 2, H, W) displacements in pixels (dx, dy) for these params."""
        strength = params["strength"].to(torch.float64)
        variance = tilt_variance(strength, self.sampling)
        power = aperture_averaged_gradient_power(self.patch)
        return filtered_field(params["seed"], height, width, power, variance, channels=2, step=self.field_step)

    def blur_sigma_map(self, params: Params, height: int, width: int) -> torch.Tensor:
        """(N, 1, H, W) local extra blur width in pixels."""
        phase = residual_phase_variance(params["strength"].to(torch.float64)).view(-1, 1, 1, 1)
        power = aperture_averaged_gradient_power(self.patch)
        ones = torch.ones_like(params["strength"], dtype=torch.float64)
        log_factor = filtered_field(params["blur_seed"], height, width, power, ones, step=self.field_step)
        factor = torch.exp(BLUR_VARIATION * log_factor - BLUR_VARIATION ** 2 / 2)
        diffraction = DIFFRACTION_SIGMA * self.sampling
        return (diffraction * torch.sqrt(torch.expm1(phase.to(torch.float32) * factor))).clamp_(max=MAX_BLUR_SIGMA)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        height, width = images.shape[-2:]
        params = {k: v.to(images.device) for k, v in params.items()}
        warped = warp(images, self.tilt_field(params, height, width))
        if not self.blur:
            return warped.clamp(0, 1)
        top, position = self.level_positions(params, images)
        return blend_levels(self._levels(warped, top), position)

    def level_positions(self, params: Params, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For (N, C, H, W) ``images`` and these params (on their device): each sample's largest
        local blur width in px (N,), and each pixel's blur level (N, 1, H, W) in
        [0, BLUR_LEVELS - 1], in the images' dtype."""
        sigma_map = self.blur_sigma_map(params, *images.shape[-2:]).to(images.dtype)
        top = sigma_map.amax(dim=(1, 2, 3)).clamp(min=1e-3)
        return top, (sigma_map / per_sample(top, images) * (BLUR_LEVELS - 1)).clamp(0, BLUR_LEVELS - 1)

    def _levels(self, warped: torch.Tensor, top: torch.Tensor) -> Iterator[torch.Tensor]:
        """``warped`` (N, C, H, W), then blurred at each level by :meth:`level_blurs`."""
        yield warped
        for blur, params in self.level_blurs(top):
            yield blur.apply(warped, params)

    def level_blurs(self, top: torch.Tensor) -> list[tuple[GaussianBlur, Params]]:
        """The Gaussian blur of each level k = 1 ... BLUR_LEVELS - 1 and its params: a width of
        ``top * k / (BLUR_LEVELS - 1)`` for (N,) ``top``, each sample's largest local width."""
        blurs = []
        for k in range(1, BLUR_LEVELS):
            # Each level's kernel reaches 3 times its largest possible sigma: on a CPU the four
            # convolutions take 64 taps per axis where one size for all (the last's) took 100.
            kernel_side = 2 * math.ceil(3 * self._max_sigma() * k / (BLUR_LEVELS - 1)) + 1
            blurs.append((GaussianBlur(sigma=[0.05, 20.0], kernel_size=[kernel_side, kernel_side]),
                          {"sigma": (top * k / (BLUR_LEVELS - 1)).clamp(min=0.05),
                           "kernel_size": torch.full((len(top),), kernel_side, device=top.device)}))
        return blurs

    def _max_sigma(self) -> float:
        """Upper bound on the local blur width in px, for a fixed kernel size (log-normal at +4 sd)."""
        phase = residual_phase_variance(self.strength[1])
        factor = math.exp(4 * BLUR_VARIATION)
        return min(DIFFRACTION_SIGMA * self.sampling * math.sqrt(math.expm1(phase * factor)), MAX_BLUR_SIGMA)

