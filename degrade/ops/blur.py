"""Blur: isotropic / anisotropic Gaussian, motion and defocus, every sample its own kernel.

Each sample's kernel is evaluated on one fixed (K, K) grid (K = the largest kernel size the
op allows), masked to the sample's own odd ``kernel_size`` and normalised to sum 1. The
whole batch is then filtered at once by a grouped convolution (``kornia.filters.filter2d``
with one kernel per sample), reflect border. K depends on the configuration only, so a
sample's output does not depend on the other samples of its batch.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
from kornia.filters import filter2d

from degrade.keyed import KeyedRandom
from degrade.ops.base import ConfigError, Op, Params, as_range
from degrade.ops.resize import both_axes


def kernel_grid(size: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel offsets from the kernel centre: two (1, size, size) tensors, x (columns) and y (rows)."""
    offsets = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    y, x = torch.meshgrid(offsets, offsets, indexing="ij")
    return x[None], y[None]


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Pixel indices reflected into [0, size) about the first and last pixels (``reflect`` border,
    the edge pixel not repeated), as often as needed."""
    period = 2 * (size - 1)
    index = index.abs() % period
    return torch.where(index >= size, period - index, index)


@functools.lru_cache(maxsize=64)
def _border_columns(size: int, reach: int, device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """For a row of ``size`` pixels padded by ``reach`` on each side: the (2 reach,) int64 padded
    columns that lie outside the row, and the (2 reach, size) 0/1 matrix taking each onto the
    column it reflects to (a product rather than an indexed add: deterministic on a GPU too)."""
    border = torch.cat([torch.arange(reach), torch.arange(size + reach, size + 2 * reach)])
    reflection = torch.zeros(2 * reach, size, dtype=dtype)
    reflection[torch.arange(2 * reach), _reflect(border - reach, size)] = 1
    return border.to(device), reflection.to(device)


def filter_reflected(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``kornia.filters.filter2d`` of (N, C, H, W) images with (N, Kh, Kw) kernels, reflect border,
    for kernels of any reach. Torch's reflect padding needs a reach below the image's side; a wider
    kernel (a 63 px blur on faces of 16 px) gets the image reflected as often as it needs, which
    gives the same values."""
    reach_y, reach_x = kernels.shape[-2] // 2, kernels.shape[-1] // 2
    height, width = images.shape[-2:]
    if reach_y < height and reach_x < width:
        return filter2d(images, kernels, border_type="reflect")
    rows = _reflect(torch.arange(-reach_y, height + reach_y, device=images.device), height)
    columns = _reflect(torch.arange(-reach_x, width + reach_x, device=images.device), width)
    return filter2d(images.index_select(-2, rows).index_select(-1, columns), kernels, padding="valid")


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(device=like.device, dtype=like.dtype).view(-1, 1, 1)


@dataclasses.dataclass
class _KernelBlur(Op):
    """Shared machinery: per-sample odd kernel sizes, masking, normalisation, filtering.

    Config: ``kernel_size``: [low, high] range of odd kernel sizes in pixels.
    Params: ``kernel_size`` (N,) int64 plus the kernel's own shape params.
    """

    kernel_size: list[int] = dataclasses.field(default_factory=lambda: [7, 21])

    def validate(self) -> None:
        lo, hi = as_range("kernel_size", self.kernel_size, 1, 63)
        if lo % 2 == 0 or hi % 2 == 0 or lo != int(lo) or hi != int(hi):
            raise ConfigError("kernel_size", f"expected odd integers, got {self.kernel_size!r}")
        self.kernel_size = [int(lo), int(hi)]

    def draw_size(self, rng: KeyedRandom) -> torch.Tensor:
        lo, hi = self.kernel_size
        return 2 * rng.integers(lo // 2, hi // 2) + 1

    def shape(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> torch.Tensor:
        """Unnormalised kernel values (N, K, K) at offsets x, y (1, K, K)."""
        raise NotImplementedError

    def kernels(self, params: Params, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(N, K, K) kernels, each masked to its own size and summing to 1."""
        x, y = kernel_grid(self.kernel_size[1], device, torch.float64)
        radius = _column((params["kernel_size"] - 1) // 2, x)
        inside = (x.abs() <= radius) & (y.abs() <= radius)
        weights = self.shape(x, y, params) * inside
        weights = weights / weights.sum(dim=(1, 2), keepdim=True).clamp(min=1e-12)
        return weights.to(dtype)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        kernels = self.kernels(params, images.device, images.dtype)
        return filter_reflected(images, kernels).clamp(0, 1)


@dataclasses.dataclass
class GaussianBlur(_KernelBlur):
    """Isotropic Gaussian blur. Config: ``sigma`` [low, high] in pixels. Params: sigma, kernel_size."""

    name = "gaussian_blur"
    foldable = True
    sigma: list[float] = dataclasses.field(default_factory=lambda: [0.2, 3.0])

    def validate(self) -> None:
        super().validate()
        self.sigma = list(as_range("sigma", self.sigma, 0.05, 20.0))

    def draw(self, rng: KeyedRandom) -> Params:
        return {"sigma": rng.uniform(*self.sigma), "kernel_size": self.draw_size(rng)}

    def shape(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> torch.Tensor:
        sigma = _column(params["sigma"], x)
        return torch.exp(-(x * x + y * y) / (2 * sigma * sigma))

    def taps(self, params: Params, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(N, K) 1-D kernels summing to 1, K the largest kernel size, zero beyond each sample's own
        size: the masked, normalised 2-D kernel is the outer product of a sample's taps with themselves."""
        offsets = torch.arange(self.kernel_size[1], device=device, dtype=torch.float64)
        offsets = offsets - (self.kernel_size[1] - 1) / 2
        sigma = params["sigma"].to(device, torch.float64)[:, None]
        radius = ((params["kernel_size"].to(device) - 1) // 2)[:, None]
        taps = torch.exp(-offsets ** 2 / (2 * sigma ** 2)) * (offsets.abs() <= radius)
        return (taps / taps.sum(dim=1, keepdim=True)).to(dtype)

    def apply(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """Separably. On a GPU, square images by their axis matrices (``M @ X @ M.T``, batched
        GEMMs): on the H100 3.2x faster than PyTorch's depthwise convolution with a kernel per
        sample (turbulence's four blur levels of 8,192 faces, 25 taps: 28 against 89 ms). On a CPU by
        that convolution, rows then columns (there the GEMMs were 1.2-2x slower)."""
        if images.is_cuda and images.shape[-1] == images.shape[-2]:
            return self.apply_by_matrices(images, params)
        taps = self.taps(params, images.device, images.dtype)
        rows = filter_reflected(images, taps[:, None, :])
        return filter_reflected(rows, taps[:, :, None]).clamp(0, 1)

    def apply_by_matrices(self, images: torch.Tensor, params: Params) -> torch.Tensor:
        """``apply`` for (N, C, S, S) images by the axis matrices; equal to the convolution to float rounding."""
        matrix = self.axis_matrix(params, images.shape[-1], images.device, images.dtype)
        return both_axes(images, matrix).clamp_(0, 1)

    def axis_matrix(self, params: Params, size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(N, size, size): row i holds the taps around pixel i, reflected at the borders as in ``apply``."""
        taps = self.taps(params, device, dtype)
        width = taps.shape[1]
        offsets = torch.arange(size, device=device)[:, None] + torch.arange(width, device=device) - width // 2
        matrix = torch.zeros(len(taps), size, size, device=device, dtype=dtype)
        return matrix.scatter_add_(2, _reflect(offsets, size).expand(len(taps), -1, -1),
                                   taps[:, None, :].expand(-1, size, -1))

    def fold_into(self, matrices: torch.Tensor, params: Params) -> torch.Tensor:
        """``matrices @ axis_matrix`` for (N, R, S) matrices, without making the (N, S, S) axis
        matrices: column i of a matrix adds ``taps[k]`` times itself to column i + k - K // 2,
        reflected at the borders, so the product is one shifted multiply-add per tap. With R = 20
        (MAug's down-sampling) on one CPU core: 6.8 against 11.5 us per sample for building the
        axis matrices and multiplying (the blur's whole cost in the ``mixed`` chain)."""
        n, rows, size = matrices.shape
        taps = self.taps(params, matrices.device, matrices.dtype)
        width = taps.shape[1]
        reach = width // 2
        spread = matrices.new_zeros(n, rows, size + 2 * reach)
        for k in range(width):
            spread[..., k:k + size].addcmul_(matrices, taps[:, k, None, None])
        border, reflection = _border_columns(size, reach, matrices.device, matrices.dtype)
        return torch.matmul(spread[..., border], reflection).add_(spread[..., reach:reach + size])


@dataclasses.dataclass
class AnisotropicBlur(_KernelBlur):
    """Anisotropic Gaussian blur, rotated.

    Config: ``sigma_x``, ``sigma_y`` [low, high] in pixels, ``angle`` [low, high] in degrees.
    Params: sigma_x, sigma_y, angle (degrees), kernel_size.
    """

    name = "anisotropic_blur"
    sigma_x: list[float] = dataclasses.field(default_factory=lambda: [0.2, 3.0])
    sigma_y: list[float] = dataclasses.field(default_factory=lambda: [0.2, 3.0])
    angle: list[float] = dataclasses.field(default_factory=lambda: [0.0, 180.0])

    def validate(self) -> None:
        super().validate()
        self.sigma_x = list(as_range("sigma_x", self.sigma_x, 0.05, 20.0))
        self.sigma_y = list(as_range("sigma_y", self.sigma_y, 0.05, 20.0))
        self.angle = list(as_range("angle", self.angle, -360.0, 360.0))

    def draw(self, rng: KeyedRandom) -> Params:
        return {"sigma_x": rng.uniform(*self.sigma_x), "sigma_y": rng.uniform(*self.sigma_y),
                "angle": rng.uniform(*self.angle), "kernel_size": self.draw_size(rng)}

    def shape(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> torch.Tensor:
        theta = _column(params["angle"], x) * (math.pi / 180)
        along = x * torch.cos(theta) + y * torch.sin(theta)
        across = -x * torch.sin(theta) + y * torch.cos(theta)
        sx, sy = _column(params["sigma_x"], x), _column(params["sigma_y"], x)
        return torch.exp(-(along ** 2 / (2 * sx ** 2) + across ** 2 / (2 * sy ** 2)))


@dataclasses.dataclass
class MotionBlur(_KernelBlur):
    """Linear motion blur: an antialiased line segment through the kernel centre.

    Config: ``length`` [low, high] in pixels (clipped to the kernel size), ``angle`` in degrees.
    Params: length, angle (degrees), kernel_size.
    """

    name = "motion_blur"
    length: list[float] = dataclasses.field(default_factory=lambda: [3.0, 15.0])
    angle: list[float] = dataclasses.field(default_factory=lambda: [0.0, 180.0])

    def validate(self) -> None:
        super().validate()
        self.length = list(as_range("length", self.length, 1.0, 63.0))
        self.angle = list(as_range("angle", self.angle, -360.0, 360.0))

    def draw(self, rng: KeyedRandom) -> Params:
        return {"length": rng.uniform(*self.length), "angle": rng.uniform(*self.angle),
                "kernel_size": self.draw_size(rng)}

    def shape(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> torch.Tensor:
        theta = _column(params["angle"], x) * (math.pi / 180)
        half = _column(params["length"], x) / 2
        along = x * torch.cos(theta) + y * torch.sin(theta)
        across = -x * torch.sin(theta) + y * torch.cos(theta)
        beyond_end = (along.abs() - half).clamp(min=0)
        return (1 - torch.sqrt(across ** 2 + beyond_end ** 2)).clamp(min=0)


@dataclasses.dataclass
class DefocusBlur(_KernelBlur):
    """Defocus: a uniform disk with an antialiased rim.

    Config: ``radius`` [low, high] in pixels. Params: radius, kernel_size.
    """

    name = "defocus_blur"
    radius: list[float] = dataclasses.field(default_factory=lambda: [1.0, 4.0])

    def validate(self) -> None:
        super().validate()
        self.radius = list(as_range("radius", self.radius, 0.5, 31.0))

    def draw(self, rng: KeyedRandom) -> Params:
        return {"radius": rng.uniform(*self.radius), "kernel_size": self.draw_size(rng)}

    def shape(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> torch.Tensor:
        radius = _column(params["radius"], x)
        return (radius + 0.5 - torch.sqrt(x * x + y * y)).clamp(0, 1)
