"""The op protocol: draw per-sample parameters, then apply them to a batch.

An op is a small dataclass whose fields are its configuration (parameter ranges, from a
recipe). ``sample`` turns sample keys into a dict of per-sample tensors (the params);
``apply`` turns images and params into degraded images. ``apply`` uses nothing but its
arguments, so the params recorded with a sample replay its degradation exactly.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import ClassVar, Sequence

import torch

from degrade.keyed import KeyedRandom
from degrade.text import counted

Params = dict[str, torch.Tensor]

# A name that is one part of the dotted path a param is stored under (``blur.gaussian_blur.sigma``):
# a recipe's stage, option and op names, and the fields an op draws. A dot in one would let two
# paths meet.
PART_NAME = re.compile(r"[A-Za-z0-9_-]+")


class ConfigError(ValueError):
    """A bad op configuration; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclasses.dataclass
class Op:
    """Base class of every degradation op.

    Subclasses set ``name``, declare configuration fields, and implement :meth:`draw`
    and :meth:`apply`. Images are float (N, C, H, W) in [0, 1] on any device.
    """

    name: ClassVar[str] = ""
    # True for ops that filter square images by one linear map A per axis (``A @ X @ A.T`` per
    # channel, each sample its own A) and so implement :meth:`fold_into`.
    foldable: ClassVar[bool] = False
    # True for ops whose ``apply`` takes ``prefilter``: a foldable op's filter to apply first,
    # as a function taking (N, R, S) matrices M to M @ A, folded into the op's own matrices.
    takes_prefilter: ClassVar[bool] = False
    # True for ops whose ``apply`` honours an optional ``chosen`` param ((N,) bool, see
    # :func:`chosen_rows`): rows where it is False come back unchanged. A recipe stage with p < 1
    # then runs such an op on the whole batch in one pass, instead of gathering the chosen rows
    # and scattering them back (three more passes over the batch).
    takes_chosen: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` for a bad configuration."""

    @property
    def changes_size(self) -> bool:
        """True when outputs are not the input size (such an op must be a recipe's last stage)."""
        return False

    def sample(self, keys: torch.Tensor, seed: int = 0, stage: int = 0) -> Params:
        """Draw this op's params for samples ``keys`` ((N,) int64): each value one per sample, (N,)."""
        return self.draw(KeyedRandom(seed, keys, stage))

    def draw(self, rng: KeyedRandom) -> Params:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Degrade ``images`` (N, C, H, W) in [0, 1] with ``params``; returns the same layout."""
        raise NotImplementedError

    def fold_into(self, matrices: torch.Tensor, params: Params) -> torch.Tensor:
        """``M @ A`` for (N, R, S) matrices M, A the (N, S, S) axis map of a :attr:`foldable` op:
        (N, R, S). A recipe folds such a stage into a following op that takes a prefilter."""
        raise NotImplementedError(f"{self.name} is not foldable")

    def __call__(self, images: torch.Tensor, keys: torch.Tensor | Sequence[int], seed: int = 0
                 ) -> tuple[torch.Tensor, Params]:
        """Degrade (N, C, H, W) float images in [0, 1] whose sample keys are ``keys``: the degraded
        images and the params drawn for them (see :func:`checked_batch`)."""
        keys = checked_batch(images, keys, f"op {self.name!r}")
        params = self.sample(keys.to(images.device), seed)
        return self.apply(images, params), params


def check_images(images: torch.Tensor, owner: str) -> None:
    """Refuse anything but a float (N, 3, H, W) batch: uint8 faces would be filtered by matrices
    cast to uint8 (zeros) without an error. A batch that requires grad is refused too: the ops
    write in place and round, so some recipes would fail deep inside autograd and others pass a
    gradient through part of the chain only. ``owner`` names the op or recipe in the message."""
    if images.dim() != 4 or images.shape[1] != 3 or not images.is_floating_point():
        uint8 = images.dtype == torch.uint8
        hint = "; for uint8 faces use degrade.engine.degrade_uint8 (or to_float first)" if uint8 else ""
        raise ValueError(f"{owner}: expects float (N, 3, H, W) images in [0, 1], got {tuple(images.shape)} "
                         f"{images.dtype}{hint}")
    if images.requires_grad:
        raise ValueError(f"{owner}: expects images that do not require grad (the degradations make data, "
                         "they are not differentiated through); pass images.detach()")


def check_size(images: torch.Tensor, size: int, owner: str) -> None:
    """Refuse images that are not ``size`` x ``size``: an op whose draws are pixels of faces of one
    size (a resize's matrices, a box's corner) would, on others, fail deep inside or erase nothing."""
    height, width = images.shape[-2:]
    if height != size or width != size:
        raise ValueError(f"{owner}: configured for {size}x{size} inputs (its size field), got {height}x{width}")


def checked_batch(images: torch.Tensor, keys: torch.Tensor | Sequence[int], owner: str) -> torch.Tensor:
    """The (N,) integer keys of a batch a caller hands to an op or a recipe, checked with its images.

    Images far outside [0, 1], as 0-255 values or normalised ones are, are refused: the ops would
    clip them to white or black without a word; so are images holding NaN, which would come out
    NaN or, clamped, black. (Checking costs one host wait, on these entry points only: the engine's
    own faces come from :func:`degrade.engine.to_float`.)"""
    check_images(images, owner)
    keys = checked_keys(keys, len(images), owner)
    if images.numel():
        low, high = torch.stack(torch.aminmax(images)).tolist()  # one host wait; NaN where any value is NaN
        if math.isnan(low):
            raise ValueError(f"{owner}: expects images in [0, 1], got {counted(int(images.isnan().sum()), 'NaN value')}")
        if low < -0.5 or high > 1.5:
            raise ValueError(f"{owner}: expects images in [0, 1], got values in [{low:g}, {high:g}]"
                             + ("; divide 0-255 values by 255" if high > 1.5 else ""))
    return keys


def checked_keys(keys: torch.Tensor | Sequence[int], count: int | None, owner: str) -> torch.Tensor:
    """``keys`` as an (N,) integer tensor, refused unless it holds one integer key for each of
    ``count`` images (None: any number)."""
    try:
        keys = torch.as_tensor(keys)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{owner}: expects one integer key per image, got {type(keys).__name__} keys "
                         f"({error})") from None
    if keys.dim() != 1 or (count is not None and len(keys) != count) or keys.is_floating_point():
        images = "" if count is None else f" for {count} images"
        raise ValueError(f"{owner}: expects one integer key per image, got keys of shape {tuple(keys.shape)} "
                         f"({keys.dtype}){images}")
    return keys


def as_range(field: str, value: object, low: float, high: float) -> tuple[float, float]:
    """Validate a ``[lo, hi]`` pair (or a single number, meaning a fixed value) inside [low, high]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if not (isinstance(value, (list, tuple)) and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ConfigError(field, f"expected a number or a [low, high] pair, got {value!r}")
    lo, hi = float(value[0]), float(value[1])
    if math.isnan(lo) or math.isnan(hi):
        raise ConfigError(field, f"expected numbers, got {value!r}")
    if lo > hi:
        raise ConfigError(field, f"low {lo} is above high {hi}")
    if lo < low or hi > high:
        raise ConfigError(field, f"[{lo}, {hi}] is outside the allowed [{low:g}, {high:g}]")
    return lo, hi


def as_probability(field: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ConfigError(field, f"expected a probability in [0, 1], got {value!r}")
    return float(value)


def is_weight(value: object) -> bool:
    """Whether ``value`` is a relative frequency: a finite number >= 0 (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def as_choice(field: str, value: object, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(field, f"expected one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def per_sample(values: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """(N,) params -> (N, 1, 1, 1) in the images' dtype and device, for broadcasting."""
    return values.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def chosen_rows(params: Params, images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 1, 1) in the images' dtype: 1 on the rows to change, 0 on the others, from the
    optional ``chosen`` param (every row when absent); for ops with ``takes_chosen``."""
    chosen = params.get("chosen")
    if chosen is None:
        return torch.ones(len(images), 1, 1, 1, device=images.device, dtype=images.dtype)
    return per_sample(chosen, images)
