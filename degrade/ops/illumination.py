"""Illumination: brightness, contrast, gamma and a directional lighting gradient."""

from __future__ import annotations

import dataclasses
import math

import torch

from degrade.keyed import KeyedRandom
from degrade.ops.base import Op, Params, as_range, per_sample


@dataclasses.dataclass
class Illumination(Op):
    """Photometric change, applied in this order: gamma, contrast, brightness, gradient.

    Config (each a [low, high] range; the neutral value keeps that part off):
        brightness: added offset, neutral 0.
        contrast: gain about the image's mean grey level, neutral 1.
        gamma: exponent x ** gamma, neutral 1.
        gradient: strength s of a linear light ramp, the image times (1 + s · r) with r from
            -1 to 1 across the face along a random direction; neutral 0.
    Params: brightness, contrast, gamma, gradient, angle (degrees, ramp direction).
    """

    name = "illumination"
    brightness: list[float] = dataclasses.field(default_factory=lambda: [-0.15, 0.15])
    contrast: list[float] = dataclasses.field(default_factory=lambda: [0.6, 1.4])
    gamma: list[float] = dataclasses.field(default_factory=lambda: [0.6, 1.6])
    gradient: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.6])

    def validate(self) -> None:
        self.brightness = list(as_range("brightness", self.brightness, -1.0, 1.0))
        self.contrast = list(as_range("contrast", self.contrast, 0.0, 10.0))
        self.gamma = list(as_range("gamma", self.gamma, 0.05, 20.0))
        self.gradient = list(as_range("gradient", self.gradient, 0.0, 1.0))

    def draw(self, rng: KeyedRandom) -> Params:
        return {
            "brightness": rng.uniform(*self.brightness),
            "contrast": rng.uniform(*self.contrast),
            "gamma": rng.uniform(*self.gamma),
            "gradient": rng.uniform(*self.gradient),
            "angle": rng.uniform(0.0, 360.0),
        }

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        _, _, h, w = images.shape
        out = images.clamp(min=1e-6) ** per_sample(params["gamma"], images)
        # Summed in float64: torch reduces a lone sample's values in another order than a batch's rows,
        # and in float32 that moved the mean of one face in two by an ulp, so a face alone (a chunk's
        # one chosen row) could come out a level away from the same face in a batch.
        grey = out.mean(dim=(1, 2, 3), keepdim=True, dtype=torch.float64).to(out.dtype)
        out = grey + per_sample(params["contrast"], images) * (out - grey)
        out = out + per_sample(params["brightness"], images)
        theta = per_sample(params["angle"], images) * (math.pi / 180)
        ys = torch.linspace(-1, 1, h, device=images.device, dtype=images.dtype).view(1, 1, h, 1)
        xs = torch.linspace(-1, 1, w, device=images.device, dtype=images.dtype).view(1, 1, 1, w)
        ramp = (xs * torch.cos(theta) + ys * torch.sin(theta)) / math.sqrt(2)
        return (out * (1 + per_sample(params["gradient"], images) * ramp)).clamp(0, 1)
