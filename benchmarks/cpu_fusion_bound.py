"""How much of the CPU engine's time fusing its elementwise passes would save (target 3's bound).

The engine runs a CPU chunk (16 faces) through each op as a few dozen torch calls, each a pass
over float32 tensors. This times the steps that are most made of such passes, the Gaussian
noise and JPEG's colour, DCT and decoding steps, eagerly and compiled by ``torch.compile``
(Inductor fuses a function's elementwise ops into C++ loops). The cached constants (normal
quantiles, hash counters, DCT matrices, quantisation tables) are handed to the compiled
functions as fixed tensors, so the compiler does not trace their construction into each call.
Needs a C++ compiler; one core, one thread, as the engine's CPU workers run.

    python3 benchmarks/cpu_fusion_bound.py --source ../shared/data/lfw112
"""

import argparse
import time
import timeit
from collections.abc import Callable

import torch

import degrade.keyed as keyed
import degrade.ops.jpeg as jpeg
from degrade.engine import CPU_CHUNK, prepare_cpu_worker, to_float
from degrade.recipe import leaf_params, load_recipe
from degrade.sources import open_source


def freeze_cached_constants(size: int) -> None:
    """Replace the lru-cached constant makers the timed steps call by functions returning the tensors."""
    cpu = torch.device("cpu")
    quantiles = keyed.normal_quantiles(cpu)
    counter = keyed._counter((3 * size * size + 1) // 2, cpu)
    matrices = jpeg._dct_matrices(cpu, torch.float32)
    tables = jpeg._tables_by_quality(cpu)
    keyed.normal_quantiles = lambda device: quantiles
    keyed._counter = lambda count, device: counter
    jpeg._dct_matrices = lambda device, dtype: matrices
    jpeg._tables_by_quality = lambda device: tables


def us_per_face(step: Callable[[], object], faces: int) -> float:
    """Best of five runs of 50 calls, in microseconds per face."""
    with torch.inference_mode():
        return min(timeit.repeat(step, number=50, repeat=5)) / 50 / faces * 1e6


def noise_in_one_expression(images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``GaussianNoise.apply`` as one expression without in-place steps, which Inductor fuses into
    one loop (it compiles the op's own code, with its in-place hash and split, to a slower one)."""
    n, channels, height, width = images.shape
    words = params["seed"].to(torch.int32)[:, None] + keyed._counter(channels * height * width // 2, images.device)
    for shift, factor in ((16, keyed._M1_I32), (15, keyed._M2_I32), (16, None)):
        words = words ^ ((words >> shift) & (0xFFFFFFFF >> shift))
        words = words if factor is None else words * factor
    index = torch.cat([words & 0xFFFF, (words >> 16) & 0xFFFF], dim=1)
    field = keyed.normal_quantiles(images.device)[index].view(n, channels, height, width)
    field = torch.where(params["grey"].view(-1, 1, 1, 1), field[:, :1].expand_as(field), field)
    return (images + field * (params["sigma"].view(-1, 1, 1, 1) / 255.0)).clamp(0, 1)


def compare(name: str, function: Callable, *args, fused: Callable | None = None) -> None:
    """One line: the step eager and compiled (``fused``, the same computation written for the
    compiler, where given), in us per face; the first call's time (compiling); how far apart the outputs are."""
    compiled = torch.compile(fused or function, dynamic=False)
    started = time.perf_counter()
    with torch.inference_mode():
        eager_out, compiled_out = function(*args), compiled(*args)
    compile_s = time.perf_counter() - started
    pairs = zip(*(out if isinstance(out, tuple) else (out,) for out in (eager_out, compiled_out)))
    largest = max((a - b).abs().max().item() for a, b in pairs)
    faces = len(args[0])
    eager_us, compiled_us = us_per_face(lambda: function(*args), faces), us_per_face(lambda: compiled(*args), faces)
    print(f"{name:<24}{eager_us:8.1f}{compiled_us:10.1f}{compiled_us / eager_us:18.2f}x{compile_s:11.1f}{largest:14.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mixed_no_turbulence", help="whose gaussian_noise and jpeg params to use")
    parser.add_argument("--source", default="demo")
    args = parser.parse_args()
    prepare_cpu_worker()
    recipe = load_recipe(args.recipe)
    freeze_cached_constants(recipe.size)
    keys = torch.arange(CPU_CHUNK)
    images = to_float(open_source(args.source, recipe.size).load(keys).hq)
    params = recipe.sample(keys)
    ops = {leaf.op.name: (leaf.op, leaf_params(params, leaf)) for leaf in recipe.leaves}
    noise, noise_params = ops["gaussian_noise"]
    quality = ops["jpeg"][1]["quality"]
    tables = jpeg.quantisation_tables(quality)
    luma, chroma = jpeg._colour_planes(images)
    size = recipe.size
    print(f"a chunk of {CPU_CHUNK} faces of {size}x{size}, one thread; us per face")
    print(f"{'step':<24}{'eager':>8}{'compiled':>10}{'compiled / eager':>19}{'compile s':>11}{'largest diff':>14}")
    compare("gaussian_noise", noise.apply, images, noise_params)
    compare("gaussian_noise, fused", noise.apply, images, noise_params, fused=noise_in_one_expression)
    compare("jpeg: colour planes", jpeg._colour_planes, images)
    compare("jpeg: DCT, luma", jpeg._round_trip_planes, luma, tables[:, 0], 128)
    compare("jpeg: DCT, chroma", jpeg._round_trip_planes, chroma, tables[:, 1], 0)
    compare("jpeg: decoding", jpeg._decoded_rgb, luma, chroma, size, size)
    compare("jpeg, whole op", jpeg.jpeg_round_trip, images, quality)


if __name__ == "__main__":
    main()
