"""The path of a batch: source keys -> decoded HQ uint8 -> recipe on the device -> HQ/LQ pairs."""

from __future__ import annotations

import ctypes
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import cv2
import torch

from degrade.machine import missing_cuda
from degrade.ops import Params
from degrade.ops.base import checked_keys
from degrade.recipe import Recipe
from degrade.sources import Faces, Source


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [0, 1] -> uint8, rounded to nearest (halves to even)."""
    levels = images.clamp(0, 1)
    if levels.device.type == "cpu" and levels.numel():
        # OpenCV scales, rounds and converts in one vectorised pass, with the same float product
        # and rounding: 7.5 against 11.4 us per 3x112x112 face on one core for torch's multiply
        # and round and NumPy's cast (torch's own float -> uint8 copy is scalar code: 10 us alone).
        rows = levels.numpy().reshape(-1, levels.shape[-1])
        return torch.from_numpy(cv2.convertScaleAbs(rows, alpha=255.0).reshape(levels.shape))
    return levels.mul_(255.0).round_().to(torch.uint8)


@dataclasses.dataclass
class PairBatch:
    """One batch of pairs, on ``hq``'s device. ``lq`` is (N, 3, S', S'): for native-size recipes
    the small faces sit top-left in a zero canvas and ``params['resize.side']`` gives their extent."""

    key: torch.Tensor       # (N,) int64
    identity: torch.Tensor  # (N,) int64
    hq: torch.Tensor        # (N, 3, S, S) uint8
    lq: torch.Tensor        # (N, 3, S', S') uint8
    params: Params          # flat dict of (N,) tensors
    attributes: torch.Tensor | None = None  # (N, A) float32, NaN where unknown

    def _map(self, move) -> PairBatch:
        return PairBatch(move(self.key), move(self.identity), move(self.hq), move(self.lq),
                         {k: move(v) for k, v in self.params.items()},
                         None if self.attributes is None else move(self.attributes))

    def cpu(self) -> PairBatch:
        return self._map(lambda t: t.cpu())

    def to(self, device: str | torch.device) -> PairBatch:
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> PairBatch:
        return self._map(lambda t: t.pin_memory())


# Samples per pass on a CPU. A chunk's float32 images (16 x 150 KB) stay in cache from op to op;
# a whole batch of 256 (38 MB) goes to memory between every two. `degrade bench --recipe
# mixed_no_turbulence --device cpu` on the 2-core machine: 2.2x the pairs/s of unchunked
# batches of 256 (docs/benchmarks.md). One process runs chunks of 16 and 32 equally fast; two
# share the cache and memory, and make 3-4 % more pairs with 16. Keyed params make the result
# independent of chunking.
CPU_CHUNK = 16


def prepare_cpu_worker() -> None:
    """Set up this process to run the engine on one CPU core (build and stream workers, and the
    benchmark's, call it; every call sets it again, so a process forked from one that changed its
    thread count back still gets one thread): one torch thread, and glibc's malloc told to keep
    freed blocks of up to 32 MB in the heap. Every op returns a new tensor of a few MB; by
    default glibc maps such blocks afresh and hands them back when freed, so each op's output
    page-faults in again: on the 2-core machine 480-600 against a steady 440 us per pair of
    `mixed_no_turbulence`. (PyTorch's CPU tuning guide swaps the allocator for the same reason.)"""
    torch.set_num_threads(1)
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)
    libc.mallopt(m_trim_threshold, 1 << 30)


def chunks(count: int, device: torch.device) -> list[slice]:
    """The row slices a batch of ``count`` samples is processed in on ``device`` (one, off CPU)."""
    step = CPU_CHUNK if device.type == "cpu" else max(1, count)
    return [slice(start, start + step) for start in range(0, max(1, count), step)]


def degrade_uint8(recipe: Recipe, hq: torch.Tensor, keys: torch.Tensor | Sequence[int],
                  seed: int | None = None) -> tuple[torch.Tensor, Params]:
    """uint8 (N, 3, S, S) faces and their (N,) keys -> uint8 LQ (N, 3, S', S') and the params.

    On a CPU the batch runs through the recipe in chunks of ``CPU_CHUNK`` samples. An empty batch
    (every input of it skipped) gives an empty LQ. Float faces are refused: read as 0-255 values
    they came out black."""
    if hq.dim() != 4 or hq.shape[1] != 3 or hq.dtype != torch.uint8:
        hint = ("; for float faces in [0, 1] call the recipe itself" if hq.is_floating_point() else
                "; for (N, H, W, 3) faces pass hq.permute(0, 3, 1, 2)" if hq.dim() == 4 and hq.shape[-1] == 3 else "")
        raise ValueError(f"degrade_uint8 (recipe {recipe.name!r}): expects uint8 (N, 3, H, W) faces, got "
                         f"{tuple(hq.shape)} {hq.dtype}{hint}")
    keys = checked_keys(keys, len(hq), f"degrade_uint8 (recipe {recipe.name!r})").to(hq.device)
    params = recipe.sample(keys, seed)
    if len(hq) == 0:
        return hq.new_zeros(0, hq.shape[1], recipe.output_size, recipe.output_size), params
    # Inference mode skips autograd's bookkeeping on each of the few hundred small tensor ops a CPU
    # chunk takes. One core of the 2-core machine, batches of 256, fresh processes alternating with
    # the code before it: `mixed_no_turbulence` 298-322 against 313-344 us per pair, `mixed` and
    # `catface` 3-5 % faster, `maug` unchanged; the same bytes. Its tensors cannot take part in
    # autograd, so the LQ handed back is the concatenation made outside it, a normal tensor.
    with torch.inference_mode():
        lq = [to_uint8(recipe.apply(to_float(hq[rows]), {k: v[rows] for k, v in params.items()}))
              for rows in chunks(len(hq), hq.device)]
    return torch.cat(lq), params


def degrade_faces(recipe: Recipe, faces: Faces, device: str | torch.device = "cpu",
                  seed: int | None = None) -> PairBatch:
    """Degrade decoded faces with ``recipe`` on ``device``; everything returned lives on ``device``."""
    if faces.hq.shape[-1] != recipe.size or faces.hq.shape[-2] != recipe.size:
        raise ValueError(f"recipe {recipe.name!r} expects {recipe.size}x{recipe.size} faces, source gives "
                         f"{faces.hq.shape[-2]}x{faces.hq.shape[-1]}")
    hq = faces.hq.to(device, non_blocking=True)
    keys = faces.key.to(device, non_blocking=True)
    lq, params = degrade_uint8(recipe, hq, keys, seed)
    return PairBatch(key=keys, identity=faces.identity.to(device), hq=hq, lq=lq, params=params)


def checked_arguments(owner: str, recipe: Recipe | None, source: object, device: str | torch.device,
                      attributes: object = None) -> torch.device:
    """``device`` as a torch device, after refusing what a Python caller of ``owner`` (a stream, a
    build) may hand it that would fail only at the first batch, deep inside: a recipe's name
    instead of a Recipe, a path instead of a source or an attributes table, a CUDA device this
    process cannot use."""
    if recipe is not None and not isinstance(recipe, Recipe):
        raise TypeError(f"{owner}: recipe is a {type(recipe).__name__}, not a Recipe; load one first: "
                        f"load_recipe({recipe!r})")
    if isinstance(source, (str, Path)):
        raise TypeError(f"{owner}: source is a path, not a Source; open it first: open_source({str(source)!r})")
    if isinstance(attributes, (str, Path)):
        raise TypeError(f"{owner}: attributes is a path, not a table; open it first: "
                        f"degrade.sources.attributes.Attributes({str(attributes)!r})")
    chosen = torch.device(device)
    missing = missing_cuda(chosen) if chosen.type == "cuda" else None
    if missing:
        raise ValueError(f"{owner}: device {str(device)!r}, but {missing}; use device='cpu'")
    return chosen


def make_pairs(recipe: Recipe, source: Source, keys: torch.Tensor, device: str | torch.device = "cpu",
               seed: int | None = None) -> PairBatch:
    """Decode ``keys`` from ``source`` and degrade them; the pairs come back on the CPU."""
    return degrade_faces(recipe, source.load(keys), device, seed).cpu()
