"""Additive Gaussian and Poisson (shot) noise, every sample its own field.

The params hold a 32-bit ``seed`` per sample rather than the field itself; ``apply``
regenerates the field from it with the counter-based hash, so replay is exact and the
row stays small.
"""

from __future__ import annotations

import dataclasses

import torch
from kornia.color import rgb_to_grayscale

from degrade.fused import kernels_for
from degrade.keyed import KeyedRandom, normal_field
from degrade.ops.base import Op, Params, as_probability, as_range, per_sample


def _field_keys(params: Params, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's (N,) seed and (N,) bool grey flag (one field shared by its channels), on the images' device."""
    return params["seed"].to(images.device), params["grey"].to(device=images.device, dtype=torch.bool)


def _noise_field(params: Params, images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) standard normal field; grey samples share one field across channels."""
    seeds, grey = _field_keys(params, images)
    return normal_field(seeds, tuple(images.shape[1:]), images.dtype, shared=grey)


@dataclasses.dataclass
class GaussianNoise(Op):
    """Additive white Gaussian noise.

    Config: ``sigma`` [low, high] in 8-bit levels (0-255 scale); ``grey``: probability that a
    sample's noise is the same in every channel.
    Params: sigma (8-bit levels), grey (bool), seed (int64).
    """

    name = "gaussian_noise"
    sigma: list[float] = dataclasses.field(default_factory=lambda: [1.0, 30.0])
    grey: float = 0.4

    def validate(self) -> None:
        self.sigma = list(as_range("sigma", self.sigma, 0.0, 255.0))
        self.grey = as_probability("grey", self.grey)

    def draw(self, rng: KeyedRandom) -> Params:
        return {"sigma": rng.uniform(*self.sigma), "grey": rng.bernoulli(self.grey), "seed": rng.seeds()}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = per_sample(params["sigma"], images) / 255.0
        kernels = kernels_for(images)
        if kernels is not None and images.dtype == torch.float32:  # one pass, the field never written
            return kernels.add_normal_noise(images, *_field_keys(params, images), sigma.view(-1))
        field = _noise_field(params, images)
        return torch.addcmul(images, field, sigma, out=field).clamp_(0, 1)


@dataclasses.dataclass
class PoissonNoise(Op):
    """Shot noise: photon counts k ~ Poisson(256 · x), as in Real-ESRGAN, the noise scaled.

    Counts are drawn at 256 levels (λ = 256 · x) by the normal approximation
    k = round(λ + √λ · z), clamped at 0 (its variance is within a few percent of λ for λ ≥ 10,
    i.e. above the darkest 4 % of the range); the noise (k / 256 − x) is multiplied by ``scale``.

    Config: ``scale`` [low, high] (Real-ESRGAN uses [0.05, 3]); ``grey`` probability.
    Params: scale, grey (bool), seed (int64).
    """

    name = "poisson_noise"
    scale: list[float] = dataclasses.field(default_factory=lambda: [0.05, 3.0])
    grey: float = 0.4

    def validate(self) -> None:
        self.scale = list(as_range("scale", self.scale, 0.0, 20.0))
        self.grey = as_probability("grey", self.grey)

    def draw(self, rng: KeyedRandom) -> Params:
        return {"scale": rng.uniform(*self.scale), "grey": rng.bernoulli(self.grey), "seed": rng.seeds()}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        grey = per_sample(params["grey"], images).bool()
        signal = torch.where(grey, rgb_to_grayscale(images).expand_as(images), images)
        rate = 256.0 * signal
        counts = torch.round(rate + rate.sqrt() * _noise_field(params, images)).clamp(min=0)
        noise = counts / 256.0 - signal
        return (images + per_sample(params["scale"], images) * noise).clamp(0, 1)
