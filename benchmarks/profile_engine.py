"""Where the engine's time goes: the kernels of one recipe on one batch, by total time.

    python3 benchmarks/profile_engine.py --recipe mixed --source ../shared/data/lfw112 --device cuda
    python3 benchmarks/profile_engine.py --recipe mixed --by-op     # each op alone on the whole batch
"""

import argparse
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from degrade.engine import degrade_uint8, to_float
from degrade.recipe import leaf_params, load_recipe
from degrade.sources import open_source


def profile_table(run: Callable[[], object], device: torch.device, rows: int) -> str:
    """Run once to warm up, then once under the profiler; the kernels sorted by total time."""
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return profiler.key_averages().table(sort_by=sort, row_limit=rows, max_name_column_width=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mixed")
    parser.add_argument("--source", default="demo")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--by-op", action="store_true", help="profile each op of the recipe alone, on every sample")
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    device = torch.device(args.device)
    source = open_source(args.source, recipe.size)
    hq = source.load(torch.arange(args.batch_size) % len(source)).hq.to(device)
    keys = torch.arange(args.batch_size, device=device)
    if not args.by_op:
        print(profile_table(lambda: degrade_uint8(recipe, hq, keys), device, rows=20))
        return
    images, params = to_float(hq), recipe.sample(keys)
    for leaf in recipe.leaves:
        own = leaf_params(params, leaf)
        print(f"== {leaf.path} ({leaf.op.name}), {args.batch_size} samples")
        print(profile_table(lambda: leaf.op.apply(images, own), device, rows=10))


if __name__ == "__main__":
    main()
