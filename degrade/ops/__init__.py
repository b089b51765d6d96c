"""Degradation ops, by name. Modules are imported on first use of a name; ``module:Class`` names
an op of your own."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import sys
import types
from pathlib import Path

from degrade.ops.base import PART_NAME, ConfigError, Op, Params
from degrade.text import did_you_mean

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
    """The op class of ``name``: a built-in op's name, or ``module:Class`` for an op of your own, an
    :class:`Op` dataclass in a module Python can import. Raises :class:`ConfigError` (field 'op')
    saying what is wrong."""
    if ":" in name:
        return _own_op_class(name)
    if name not in _OP_CLASSES:
        raise ConfigError("op", f"unknown op {name!r}{did_you_mean(name, OP_NAMES)} (known ops: {', '.join(OP_NAMES)}, "
                                "or module:Class for your own)")
    module, attribute = _OP_CLASSES[name]
    return getattr(importlib.import_module(module), attribute)


def _own_op_class(name: str) -> type[Op]:
    module_name, _, class_name = name.partition(":")
    try:
        module = _import_own_module(module_name)
    except ImportError as error:
        raise ConfigError("op", f"{name!r}: cannot import {module_name!r} ({error}); put it in the current "
                                "folder, install it or put its folder on PYTHONPATH") from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Op) and dataclasses.is_dataclass(cls)):
        raise ConfigError("op", f"{name!r}: {module_name} has no Op dataclass named {class_name!r}")
    if not PART_NAME.fullmatch(cls.name) or cls.name in _OP_CLASSES:
        raise ConfigError("op", f"{name!r}: its `name` must be letters, digits, '_' or '-', and not a built-in op's "
                                f"(it names the op's params), got {cls.name!r}")
    return cls


def own_op_code(ops: list[Op]) -> dict[str, str]:
    """{module name: SHA-256 hex digest of its file} for the modules holding those of ``ops`` that are
    your own (not degrade's), so that a build resumed after one of them was edited is told apart;
    empty when all are built-in. A module without a file (made in memory) is left out."""
    files = {type(op).__module__: getattr(sys.modules.get(type(op).__module__), "__file__", None) for op in ops}
    return {module: hashlib.sha256(Path(file).read_bytes()).hexdigest() for module, file in sorted(files.items())
            if file and not module.startswith("degrade.")}


def _import_own_module(module_name: str) -> types.ModuleType:
    """Import ``module_name`` as Python would, and failing that from the current folder, as
    ``python -m`` and ``python script.py`` find a module beside you (the ``degrade`` console script
    does not look there). The folder goes last on the path, so an installed module of the same name
    wins; worker processes start in the same folder and find it the same way."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.append(here)
    return importlib.import_module(module_name)


__all__ = ["ConfigError", "OP_NAMES", "Op", "Params", "op_class", "own_op_code"]
