"""A candidate for target 1 (docs/benchmarks.md): turbulence's blur levels as direct separable
convolutions in Triton, against the engine's batched GEMMs, on the same faces.

    python3 benchmarks/turbulence_levels.py --source ../shared/data/lfw112 --batch-size 4096
    TRITON_INTERPRET=1 python3 benchmarks/turbulence_levels.py --check    # on a CPU: equal to float rounding?

On a GPU the engine blurs each warped face at four levels by its axis matrices, ``M @ X @ M.T``
with (112, 112) matrices (``GaussianBlur.apply_by_matrices``): 67 MFLOP per face, float32 on
the SIMT cores, the bound of target 1 since session 12. The Gaussians are banded: at the
default D/r0 up to 2 the levels take 7, 13, 19 and 25 taps, 9.6 MFLOP per face as convolutions.
Here two kernels do the whole of ``blend_levels(levels)``: one blurs the rows at every level,
the other the columns and blends the levels at each pixel, so the levels' rows are written and
read once, and neither the levels nor any matrices at all. Not in the engine until a GPU shows
it faster: the script prints both times, their ratio and the largest difference.
"""

import argparse
import sys
import time

import torch
import triton
import triton.language as tl

from degrade.keyed import uniform_field
from degrade.ops.turbulence import Turbulence, blend_levels
from degrade.sources import open_source

@triton.jit
def _reflected(index, size):
    """``blur._reflect``: indices reflected into [0, size) about the first and last pixels."""
    period = 2 * (size - 1)
    index = tl.abs(index) % period
    return tl.where(index >= size, period - index, index)


@triton.jit
def _rows_kernel(images_ptr, taps_ptr, sides_ptr, out_ptr, planes, channels, height, width, most_taps,
                 LEVELS: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    columns = tl.arange(0, WIDTH)
    inside = (rows[:, None] < height) & (columns[None, :] < width)
    sample_taps = taps_ptr + (plane // channels) * LEVELS * most_taps
    image = images_ptr + plane * height * width + rows[:, None] * width
    for level in tl.static_range(LEVELS):
        side = tl.load(sides_ptr + level)
        total = tl.zeros((ROWS, WIDTH), dtype=tl.float32)
        for tap in range(side):
            weight = tl.load(sample_taps + level * most_taps + tap)
            source = _reflected(columns + tap - side // 2, width)
            total += weight * tl.load(image + source[None, :], mask=inside, other=0.0)
        at = (level * planes + plane) * height * width + rows[:, None] * width + columns[None, :]
        tl.store(out_ptr + at, total, mask=inside)


@triton.jit
def _columns_blend_kernel(images_ptr, rows_ptr, taps_ptr, sides_ptr, position_ptr, out_ptr, planes, channels,
                          height, width, most_taps, LEVELS: tl.constexpr, ROWS: tl.constexpr, WIDTH: tl.constexpr):
    plane = tl.program_id(0).to(tl.int64)
    sample = plane // channels
    rows = tl.program_id(1) * ROWS + tl.arange(0, ROWS)
    columns = tl.arange(0, WIDTH)
    inside = (rows[:, None] < height) & (columns[None, :] < width)
    pixels = rows[:, None] * width + columns[None, :]
    position = tl.load(position_ptr + sample * height * width + pixels, mask=inside, other=0.0)
    out = tl.load(images_ptr + plane * height * width + pixels, mask=inside, other=0.0) * tl.maximum(1 - position, 0)
    sample_taps = taps_ptr + sample * LEVELS * most_taps
    for level in tl.static_range(LEVELS):
        side = tl.load(sides_ptr + level)
        blurred_rows = rows_ptr + (level * planes + plane) * height * width
        total = tl.zeros((ROWS, WIDTH), dtype=tl.float32)
        for tap in range(side):
            weight = tl.load(sample_taps + level * most_taps + tap)
            source = _reflected(rows + tap - side // 2, height)
            total += weight * tl.load(blurred_rows + source[:, None] * width + columns[None, :], mask=inside, other=0.0)
        blurred = tl.minimum(tl.maximum(total, 0), 1)  # GaussianBlur.apply clamps each level
        out += blurred * tl.maximum(1 - tl.abs(position - (level + 1)), 0)
    tl.store(out_ptr + plane * height * width + pixels, tl.minimum(tl.maximum(out, 0), 1), mask=inside)


def level_taps(op: Turbulence, top: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The taps ``Turbulence._levels`` blurs with: (N, levels, most taps) float32, each level's
    taps first and zeros after, and the (levels,) int32 number of taps of each level."""
    taps = [blur.taps(params, top.device, torch.float32) for blur, params in op.level_blurs(top)]
    sides = torch.tensor([t.shape[1] for t in taps], dtype=torch.int32, device=top.device)
    packed = torch.zeros(len(top), len(taps), int(sides.max()), device=top.device)
    for level, t in enumerate(taps):
        packed[:, level, :t.shape[1]] = t
    return packed, sides


def blended_by_convolutions(warped: torch.Tensor, taps: torch.Tensor, sides: torch.Tensor, position: torch.Tensor,
                            rows_per_program: int = 8, warps: int = 4) -> torch.Tensor:
    """``blend_levels([warped, blurred at each level], position)`` by the two kernels: (N, C, H, W)
    float32 in [0, 1], taps and sides from :func:`level_taps`, (N, 1, H, W) positions in
    [0, levels] -> (N, C, H, W) in [0, 1]. A program covers ``rows_per_program`` rows across the
    whole width."""
    n, channels, height, width = warped.shape
    planes, levels = n * channels, taps.shape[1]
    warped, position = warped.contiguous(), position.contiguous()
    rows = warped.new_empty(levels, planes, height, width)
    out = torch.empty_like(warped)
    grid = (planes, triton.cdiv(height, rows_per_program))
    shape = dict(LEVELS=levels, ROWS=rows_per_program, WIDTH=triton.next_power_of_2(width), num_warps=warps)
    _rows_kernel[grid](warped, taps, sides, rows, planes, channels, height, width, taps.shape[2], **shape)
    _columns_blend_kernel[grid](warped, rows, taps, sides, position, out, planes, channels, height, width,
                                taps.shape[2], **shape)
    return out


def inputs(faces: torch.Tensor, op: Turbulence) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What ``Turbulence.apply`` blends, for (N, 3, S, S) float faces standing in for the warped
    ones (the warp is not what is timed): the faces, each sample's largest local blur width (N,)
    and each pixel's level (N, 1, S, S)."""
    keys = torch.arange(len(faces))
    params = {"strength": 0.25 + 1.75 * uniform_field(keys, ()), "seed": keys, "blur_seed": keys + 10 ** 6}
    top, position = op.level_positions({name: value.to(faces.device) for name, value in params.items()}, faces)
    return faces, top, position


def by_matrices(op: Turbulence, warped: torch.Tensor, top: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """What the engine does now."""
    return blend_levels(op._levels(warped, top), position)


def check() -> int:
    """Equal to the engine's levels and blend to float rounding on small CPU faces (run with
    TRITON_INTERPRET=1): odd sides, and sides the widest kernel reaches past (reflected twice)."""
    op = Turbulence()
    worst = 0.0
    for height, width, rows_per_program in ((37, 30, 8), (9, 11, 4)):
        faces = uniform_field(torch.arange(3), (3, height, width))
        warped, top, position = inputs(faces, op)
        taps, sides = level_taps(op, top)
        candidate = blended_by_convolutions(warped, taps, sides, position, rows_per_program)
        worst = max(worst, (candidate - by_matrices(op, warped, top, position)).abs().max().item())
    print(f"largest difference from the engine's levels and blend: {worst:.2e}")
    return 0 if worst < 1e-5 else 1


def timed(run, device: torch.device, repeats: int) -> float:
    """Median milliseconds of ``run()``."""
    times = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        torch.cuda.synchronize(device)
        times.append(1e3 * (time.perf_counter() - start))
    return sorted(times[1:])[len(times[1:]) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="demo")
    parser.add_argument("--batch-size", type=int, default=4096, help="faces (mixed and catface turbulence half a batch)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--check", action="store_true", help="only compare with the engine on small CPU faces")
    args = parser.parse_args()
    if args.check:
        return check()
    device = torch.device("cuda")
    op = Turbulence()
    source = open_source(args.source)
    keys = torch.arange(args.batch_size) % len(source)
    faces = source.load(keys).hq.to(device).float() / 255
    warped, top, position = inputs(faces, op)
    taps, sides = level_taps(op, top)
    engine = by_matrices(op, warped, top, position)
    candidate = blended_by_convolutions(warped, taps, sides, position)
    difference = (candidate - engine).abs().max().item()
    matrices_ms = timed(lambda: by_matrices(op, warped, top, position), device, args.repeats)
    print(f"{args.batch_size} faces, taps per level {sides.tolist()}: the engine's levels and blend {matrices_ms:.2f} ms; "
          f"largest difference of the kernels from them {difference:.2e} (each time includes making the taps)")
    for rows_per_program in (4, 8, 16):
        for warps in (2, 4, 8):
            milliseconds = timed(lambda: blended_by_convolutions(warped, *level_taps(op, top), position,
                                                                 rows_per_program, warps), device, args.repeats)
            print(f"  the two kernels, {rows_per_program:2d} rows per program, {warps} warps: {milliseconds:6.2f} ms "
                  f"({matrices_ms / milliseconds:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
