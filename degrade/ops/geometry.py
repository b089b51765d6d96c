"""Deformation: a smooth random (elastic) displacement field per sample."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import torch

from degrade.keyed import KeyedRandom
from degrade.ops.base import ConfigError, Op, Params, as_range
from degrade.ops.fields import filtered_field, warp


@functools.lru_cache(maxsize=16)
def gaussian_power(correlation: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Spectrum of white noise smoothed by a Gaussian of std ``correlation`` pixels. One function
    per correlation length, so that the fields' filters made from it are cached."""

    def power(radius: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((2 * math.pi * correlation * radius) ** 2))

    return power


@dataclasses.dataclass
class Elastic(Op):
    """Elastic deformation: x and y displaced by independent smooth Gaussian fields.

    Config: ``magnitude`` [low, high], the displacement std in pixels; ``smoothness``, the
    field's correlation length in pixels.
    Params: magnitude (px), seed (int64).
    """

    name = "elastic"
    magnitude: list[float] = dataclasses.field(default_factory=lambda: [0.5, 3.0])
    smoothness: float = 8.0

    def validate(self) -> None:
        self.magnitude = list(as_range("magnitude", self.magnitude, 0.0, 50.0))
        if not isinstance(self.smoothness, (int, float)) or not 0.5 <= self.smoothness <= 256:
            raise ConfigError("smoothness", f"expected pixels in [0.5, 256], got {self.smoothness!r}")

    def draw(self, rng: KeyedRandom) -> Params:
        return {"magnitude": rng.uniform(*self.magnitude), "seed": rng.seeds()}

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        _, _, h, w = images.shape
        variance = params["magnitude"].to(torch.float64) ** 2
        # A Gaussian spectrum of std 1 / (2 pi smoothness) is negligible (e^-pi^2) at
        # 1 / (4 step) cycles per pixel for step = smoothness / 2 (see filtered_field).
        field = filtered_field(params["seed"].to(images.device), h, w, gaussian_power(self.smoothness),
                               variance.to(images.device), channels=2, step=max(1, int(self.smoothness // 2)))
        return warp(images, field).clamp(0, 1)
