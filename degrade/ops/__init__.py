"""Degradation ops, by name. Modules are imported on first use of a name."""

from __future__ import annotations

import importlib

from degrade.ops.base import ConfigError, Op, Params

_OP_CLASSES = {
    "resize": ("degrade.ops.resize", "Resize"),
    "gaussian_blur": ("degrade.ops.blur", "GaussianBlur"),
    "anisotropic_blur": ("degrade.ops.blur", "AnisotropicBlur"),
    "motion_blur": ("degrade.ops.blur", "MotionBlur"),
    "defocus_blur": ("degrade.ops.blur", "DefocusBlur"),
    "gaussian_noise": ("degrade.ops.noise", "GaussianNoise"),
    "poisson_noise": ("degrade.ops.noise", "PoissonNoise"),
    "jpeg": ("degrade.ops.jpeg", "Jpeg"),
    "turbulence": ("degrade.ops.turbulence", "Turbulence"),
    "erase": ("degrade.ops.occlusion", "RectangleErase"),
    "crop_pad": ("degrade.ops.occlusion", "CropPad"),
    "illumination": ("degrade.ops.illumination", "Illumination"),
    "elastic": ("degrade.ops.geometry", "Elastic"),
}

OP_NAMES = tuple(_OP_CLASSES)


def op_class(name: str) -> type[Op]:
    """The op class registered as ``name``; KeyError lists the known names."""
    if name not in _OP_CLASSES:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(OP_NAMES)}")
    module, attribute = _OP_CLASSES[name]
    return getattr(importlib.import_module(module), attribute)


__all__ = ["ConfigError", "OP_NAMES", "Op", "Params", "op_class"]
