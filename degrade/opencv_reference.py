"""A plain per-image OpenCV / NumPy pipeline doing the work of a recipe, for benchmarks.

It replays the params the engine drew (so both do the same work on the same samples) the way a
typical CPU data loader would: one uint8 HxWx3 image at a time, cv2 calls where OpenCV has
them (its random generator included), NumPy elsewhere. It is a speed baseline, not a bit-exact
twin of the engine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np

from degrade.ops import Op, Params
from degrade.recipe import Leaf, Recipe, leaf_params

_UP = {"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}
_DOWN = {"area": cv2.INTER_AREA, "bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}


def _offsets(size: int) -> tuple[np.ndarray, np.ndarray]:
    axis = np.arange(size, dtype=np.float32) - (size - 1) / 2
    return np.meshgrid(axis, axis)


def _normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 draws of ``shape`` from OpenCV's generator, seeded by ``seed``.

    Drawn as one single-channel row: ``cv2.randn`` takes its mean and deviation per channel, so a
    multi-channel array given scalars gets noise in its first channel only. For a 112x112x3 face,
    a Gaussian-noise op made this way takes 81-88 us on one core of the 2-core machine, with
    NumPy's generator (a ``default_rng`` per image, as a seeded loader makes) 262 us."""
    cv2.setRNGSeed(seed & 0x7FFFFFFF)
    draws = np.empty((1, math.prod(shape)), np.float32)
    cv2.randn(draws, 0.0, 1.0)
    return draws.reshape(shape)


def _bytes(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform uint8 draws in [0, 255] of ``shape`` from OpenCV's generator, seeded by ``seed``."""
    cv2.setRNGSeed(seed & 0x7FFFFFFF)
    draws = np.empty((1, math.prod(shape)), np.uint8)
    cv2.randu(draws, 0, 256)
    return draws.reshape(shape)


def _kernel(name: str, p: dict, size: int) -> np.ndarray:
    x, y = _offsets(size)
    if name == "anisotropic_blur":
        t = math.radians(p["angle"])
        along, across = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        kernel = np.exp(-(along ** 2 / (2 * p["sigma_x"] ** 2) + across ** 2 / (2 * p["sigma_y"] ** 2)))
    elif name == "motion_blur":
        t = math.radians(p["angle"])
        along, across = x * math.cos(t) + y * math.sin(t), -x * math.sin(t) + y * math.cos(t)
        beyond = np.maximum(np.abs(along) - p["length"] / 2, 0)
        kernel = np.maximum(1 - np.sqrt(across ** 2 + beyond ** 2), 0)
    else:
        kernel = np.clip(p["radius"] + 0.5 - np.sqrt(x * x + y * y), 0, 1)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=8)
def _tilt_gain(grid: int, step: int, patch: float) -> np.ndarray:
    """The turbulence tilt filter on a grid x grid FFT grid of points ``step`` px apart,
    computed once per size (as a loader would)."""
    from degrade.ops.fields import frequency_radius
    from degrade.ops.turbulence import aperture_averaged_gradient_power

    radius = frequency_radius(grid, grid, "cpu") / step
    spectrum = aperture_averaged_gradient_power(patch)(radius).numpy()
    return np.sqrt(spectrum / spectrum.mean()).astype(np.float32)


def _power_law_field(seed: int, size: int, patch: float, step: int, std: float) -> np.ndarray:
    """Two smooth fields (dx, dy) with the turbulence tilt spectrum, by NumPy FFT on the engine's
    coarse grid (points ``step`` px apart) and bicubic up-sampling."""
    from degrade.ops.fields import fft_size

    samples = -(-size // step)
    grid = fft_size(2 * samples)
    noise = _normal(seed, (2, grid, grid))
    field = np.fft.ifft2(np.fft.fft2(noise) * _tilt_gain(grid, step, patch)).real[:, :samples + 1, :samples + 1]
    up = (samples + 1) * step
    field = np.stack([cv2.resize(f.astype(np.float32), (up, up), interpolation=cv2.INTER_CUBIC) for f in field])
    return (field[:, :size, :size] * std).astype(np.float32)


def _remap(image: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    h, w = dx.shape
    base_x, base_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(image, base_x + dx, base_y + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


def _resize(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (p["side"], p["side"]), interpolation=_DOWN[op.down])
    return small if op.output == "native" else cv2.resize(small, (w, h), interpolation=_UP[op.up])


def _gaussian_blur(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    k = int(p["kernel_size"])
    return cv2.GaussianBlur(image, (k, k), p["sigma"], borderType=cv2.BORDER_REFLECT_101)


def _kernel_blur(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    return cv2.filter2D(image, -1, _kernel(op.name, p, int(p["kernel_size"])), borderType=cv2.BORDER_REFLECT_101)


def _gaussian_noise(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    h, w, channels = image.shape
    noise = _normal(p["seed"], (h, w, 1 if p["grey"] else channels)) * np.float32(p["sigma"])
    if p["grey"]:
        noise = np.repeat(noise, channels, axis=2)
    return cv2.add(image, noise, dtype=cv2.CV_8U)  # rounded and saturated, as np.clip(...).round()


def _poisson_noise(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    pixels = image.astype(np.float32)
    rate = (pixels.mean(axis=2, keepdims=True) if p["grey"] else pixels) / 255 * 256
    noise = (np.random.default_rng(p["seed"]).poisson(rate) / 256 - rate / 256) * 255 * p["scale"]
    return np.clip(pixels + noise, 0, 255).round().astype(np.uint8)


def _jpeg(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(p["quality"])])
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _erase(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    t, l, bh, bw = (int(p[k]) for k in ("top", "left", "height", "width"))
    out = image.copy()
    if p["fill"] == 1:
        out[t:t + bh, l:l + bw] = image.reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
    elif p["fill"] == 2:
        out[t:t + bh, l:l + bw] = _bytes(p["seed"], (bh, bw, 3))
    else:
        out[t:t + bh, l:l + bw] = 0
    return out


def _crop_pad(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    t, l, bh, bw = (int(p[k]) for k in ("top", "left", "height", "width"))
    out = np.zeros_like(image)
    out[t:t + bh, l:l + bw] = image[t:t + bh, l:l + bw]
    return out


def _illumination(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    h, w = image.shape[:2]
    pixels = (image.astype(np.float32) / 255) ** p["gamma"]
    pixels = pixels.mean() + p["contrast"] * (pixels - pixels.mean()) + p["brightness"]
    x, y = np.meshgrid(np.linspace(-1, 1, w, dtype=np.float32), np.linspace(-1, 1, h, dtype=np.float32))
    t = math.radians(p["angle"])
    ramp = (x * math.cos(t) + y * math.sin(t)) / math.sqrt(2)
    return (np.clip(pixels * (1 + p["gradient"] * ramp)[:, :, None], 0, 1) * 255).round().astype(np.uint8)


def _elastic(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    h, w = image.shape[:2]
    noise = _normal(p["seed"], (2, h, w))
    field = np.stack([cv2.GaussianBlur(n, (0, 0), op.smoothness) for n in noise])
    field *= p["magnitude"] / max(float(field.std()), 1e-6)
    return _remap(image, field[0], field[1])


def _turbulence(op: Op, image: np.ndarray, p: dict) -> np.ndarray:
    from degrade.ops.turbulence import MAX_BLUR_SIGMA, residual_phase_variance, tilt_variance

    h, w = image.shape[:2]
    std = math.sqrt(tilt_variance(p["strength"], op.sampling))
    dx, dy = _power_law_field(p["seed"], h, op.patch, op.field_step, std)
    warped = _remap(image, dx, dy)
    if not op.blur:
        return warped
    sigma = 0.42 * op.sampling * math.sqrt(math.expm1(residual_phase_variance(p["strength"])))
    variation = cv2.GaussianBlur(_normal(p["blur_seed"], (h, w)), (0, 0), op.patch / 2)
    local = np.minimum(sigma * np.exp(0.5 * variation / max(float(variation.std()), 1e-6)), MAX_BLUR_SIGMA)
    levels = [warped.astype(np.float32)] + [
        cv2.GaussianBlur(warped, (0, 0), max(float(local.max()) * k / 4, 0.05)).astype(np.float32) for k in range(1, 5)]
    position = np.clip(local / max(float(local.max()), 1e-6) * 4, 0, 4)
    lower = np.minimum(position.astype(np.int64), 3)
    stack = np.stack(levels)
    rows, cols = np.indices((h, w))
    below, above = stack[lower, rows, cols], stack[lower + 1, rows, cols]
    blend = below + (position - lower)[:, :, None] * (above - below)
    return np.clip(blend, 0, 255).round().astype(np.uint8)


# Each built-in op's twin: (op, one (H, W, 3) uint8 RGB image, its params as Python scalars) -> image.
_TWINS: dict[str, Callable[[Op, np.ndarray, dict], np.ndarray]] = {
    "resize": _resize, "gaussian_blur": _gaussian_blur, "anisotropic_blur": _kernel_blur,
    "motion_blur": _kernel_blur, "defocus_blur": _kernel_blur, "gaussian_noise": _gaussian_noise,
    "poisson_noise": _poisson_noise, "jpeg": _jpeg, "erase": _erase, "crop_pad": _crop_pad,
    "illumination": _illumination, "elastic": _elastic, "turbulence": _turbulence,
}


def apply_leaf(leaf: Leaf, image: np.ndarray, p: dict) -> np.ndarray:
    """One op on one (H, W, 3) uint8 RGB image with this sample's params ``p`` (Python scalars)."""
    if leaf.op.name not in _TWINS:
        raise KeyError(f"no OpenCV reference for op {leaf.op.name!r}")
    return _TWINS[leaf.op.name](leaf.op, image, p)


def sample_params(params: Params | dict[str, np.ndarray], leaf: Leaf) -> list[dict]:
    """``leaf``'s params of each sample of a batch, as Python scalars: from (N,) params columns
    (CPU tensors, as the recipe draws them, or arrays), N dicts."""
    columns = {field: value.tolist() for field, value in leaf_params(params, leaf).items()}
    count = len(next(iter(params.values())))
    return [{field: column[index] for field, column in columns.items()} for index in range(count)]


def replay_plan(recipe: Recipe, params: Params) -> list[list[tuple[Leaf, dict]]]:
    """For each sample of a batch, the ops that ran on it in order, each with the sample's params
    as Python scalars: what a per-image loop reads before it degrades an image. Made once per
    batch from the (N,) params the recipe drew (CPU tensors), as lists: reading each image's
    scalars out of the arrays took 41 us per pair of `mixed_no_turbulence`, the lists 4."""
    # As arrays: NumPy's tolist and indexing took 4 us per pair of `mixed_no_turbulence`, torch's 7.
    columns = {name: value.numpy() for name, value in params.items()}
    by_leaf = {leaf.path: sample_params(columns, leaf) for leaf in recipe.leaves}
    return [[(leaf, by_leaf[leaf.path][index]) for leaf in recipe.leaves_applied(columns, index)]
            for index in range(len(next(iter(params.values()))))]


def degrade_one(image: np.ndarray, ops: list[tuple[Leaf, dict]]) -> np.ndarray:
    """One sample's ops (a row of :func:`replay_plan`) on its (H, W, 3) uint8 RGB image."""
    for leaf, p in ops:
        image = apply_leaf(leaf, image, p)
    return image
