"""Where the engine's GPU time goes: the CUDA kernels of one recipe on one batch, by total time.

    python3 benchmarks/profile_engine.py --recipe mixed --source ../shared/data/lfw112 --device cuda
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from degrade.engine import degrade_uint8
from degrade.recipe import load_recipe
from degrade.sources import open_source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="mixed")
    parser.add_argument("--source", default="demo")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=8192)
    args = parser.parse_args()
    recipe = load_recipe(args.recipe)
    source = open_source(args.source, recipe.size)
    hq = source.load(torch.arange(args.batch_size) % len(source)).hq.to(args.device)
    keys = torch.arange(args.batch_size, device=args.device)
    degrade_uint8(recipe, hq, keys)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if hq.is_cuda else [])
    with profile(activities=activities) as profiler:
        degrade_uint8(recipe, hq, keys + args.batch_size)
        if hq.is_cuda:
            torch.cuda.synchronize()
    sort = "cuda_time_total" if hq.is_cuda else "cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=20, max_name_column_width=60))


if __name__ == "__main__":
    main()
