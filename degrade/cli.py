"""The ``degrade`` command line.

torch and the engine are imported inside the commands, so ``degrade --help``, ``degrade build
--help`` and the other engine commands' help answer in 0.1 s rather than after the 1.4 s of
importing torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from degrade.machine import missing_cuda, usable_cores
from degrade.text import counted


def _resolve_device(name: str) -> str:
    """``--device``, checked as it is read: `auto` -> cuda when available, else cpu; anything but
    cpu, cuda or cuda:N, or a CUDA device this machine does not have, is a usage error.

    Under torchrun a plain `cuda` (or `auto`) is each rank's own GPU, cuda:LOCAL_RANK; a machine
    with fewer GPUs than ranks is a usage error. A CUDA device also becomes the process's current
    one, on which NCCL and Triton launch their work."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"expected cpu, cuda, cuda:N or auto, got {name!r}", param_hint="--device")
    if device.type == "cpu":
        return name
    missing = missing_cuda(device)
    if missing:
        raise click.BadParameter(f"{name}: {missing}; use --device cpu", param_hint="--device")
    count = torch.cuda.device_count()
    if device.index is None and "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= count:
            raise click.BadParameter(f"torchrun started rank {local_rank} of this machine, which has {count} CUDA "
                                     f"devices: start one rank per GPU (--nproc-per-node {count} or fewer), or name the "
                                     "GPU they share (--device cuda:0; a build can, DDP training cannot)",
                                     param_hint="--device")
        device = torch.device("cuda", local_rank)
    if device.index is not None:  # a plain `cuda` is the current device already
        torch.cuda.set_device(device)
    return str(device)


def _recipe(name: str):
    from degrade.recipe import RecipeError, load_recipe

    with reported(RecipeError):
        return load_recipe(name)


@contextlib.contextmanager
def reported(*errors: type[Exception]) -> Iterator[None]:
    """``errors`` (whose messages name the file and the problem), and an OSError (an output path
    that cannot be made or written: not a folder, no space, no permission), end the command with
    one ``Error: ...`` line and exit 1 rather than a traceback."""
    try:
        yield
    except errors as error:
        raise click.ClickException(str(error)) from None
    except OSError as error:
        raise click.ClickException(f"{error.filename}: {error.strerror}" if error.filename else str(error)) from None


def given(name: str) -> bool:
    """Whether the command line gave the current command's option ``name`` (not its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def first_rank() -> bool:
    """Whether this process is rank 0 of a torchrun job, or runs alone: under torchrun every rank
    knows the whole outcome, and one says it."""
    return os.environ.get("RANK", "0") == "0"


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


@contextlib.contextmanager
def ends_on_stop_signals(say: Callable[[str], str], finish_first: bool = False) -> Iterator[threading.Event]:
    """Ctrl-C, and SIGTERM (`kill`, `timeout`, Slurm's preemption, `docker stop`), stop the command
    through its exception handling (a build's workers shut down, its shard under way left
    unfinished), then end it with the line ``say("interrupted" or "terminated")`` (under torchrun,
    from rank 0 alone) and the exit code a shell gives a command stopped by the signal, 130 or 143.
    (By default Ctrl-C ends a click command with `Aborted!`, and SIGTERM ends the process where it is.)

    With ``finish_first`` the first SIGTERM only sets the event this yields, for the command to end
    its work at a point of its choosing (a training run: after the step under way, with a
    checkpoint); when the body returns with it set, the command ends as terminated. A second
    SIGTERM stops it at once, as Ctrl-C does."""
    asked = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:
        if finish_first and not asked.is_set():
            asked.set()
            return
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield asked
        if asked.is_set():
            raise _Terminated
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, _Terminated)
        if first_rank():
            click.echo(say("terminated" if terminated else "interrupted"), err=True)
        raise SystemExit(128 + (signal.SIGTERM if terminated else signal.SIGINT)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _source(spec: str, size: int, strict: bool = False):
    from degrade.sources import SourceError, open_source

    with reported(SourceError):
        return open_source(spec, size, strict)


def default_workers() -> int:
    """Decoding workers per build or training process: the cores this process may use shared among
    the ranks torchrun started on the machine (``LOCAL_WORLD_SIZE``), at most 16 each, at least 1."""
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(usable_cores() // ranks_here, 16))


recipe_option = click.option("--recipe", "-r", required=True, metavar="NAME|FILE",
                             help="Built-in recipe name (see `degrade recipes`) or a recipe YAML file.")
source_option = click.option(
    "--source", "-s", default="demo", show_default=True, metavar="demo[:IDENTITIES]|PATH",
    help="`demo` (synthetic faces; `demo:20000` for 20,000 identities of 10), a folder of identity sub-folders, "
         "an insightface train.rec (or its folder), a saved HF dataset / .parquet / .arrow / folder of .parquet "
         "shards with an image column "
         "(a degrade build's HQ faces: a raw build's are read with nothing to decode), an LFW-style pairs.txt, "
         "or a .bin set.")
# The range of degrade.keyed.MAX_SEED, not imported here (it imports torch).
seed_option = click.option("--seed", type=click.IntRange(0, 0xFFFFFFFF), default=None,
                           help="Recipe seed, 0 to 4294967295 (default: the recipe's own).")
num_workers_option = click.option(
    "--num-workers", "-j", default=None, type=click.IntRange(0),
    callback=lambda context, parameter, workers: default_workers() if workers is None else workers,
    help="DataLoader processes decoding the faces; on a CPU they also degrade them, one core each (default: every "
         "core, at most 16, under torchrun shared among the ranks of a machine; 0: all in this process).")
device_option = click.option("--device", default="auto", show_default=True,
                             callback=lambda context, parameter, name: _resolve_device(name),
                             help="`cpu`, `cuda`, `cuda:N`, or `auto` (CUDA when available). Under torchrun `cuda` is each "
                                  "rank's own GPU, cuda:LOCAL_RANK.")


class _Commands(click.Group):
    """The engine's commands, plus the trainers' (`train`, `eval`), imported only when used: the
    group's help shows their one-line help from here (a test keeps it equal to theirs), so that
    ``degrade --help`` does not import the trainers and torch (1.4 s)."""

    lazy = {"train": ("trainers.cli", "train_group",
                      "Train a model on HQ/LQ pairs streamed from the engine (or read from a build)."),
            "eval": ("trainers.cli", "eval_command",
                     "Verification (k-fold accuracy, TAR@FAR, AUC) same- and cross-resolution, and identification.")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, click.Command(name, help=self.lazy[name][2]) if name in self.lazy else self.get_command(ctx, name))
                for name in names]
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in rows])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy:
            import importlib

            module, attribute, _ = self.lazy[name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="degrade")
def main() -> None:
    """degrade: paired high-/low-quality faces for low-quality face recognition.

    Recipes compose degradations (multi-resolution resize, blur, noise, JPEG, turbulence,
    occlusion, illumination); every random draw of a sample is keyed by (seed, key, stage),
    so a sample's LQ is the same whatever the batch size, order or device.
    """
    warnings.showwarning = _WarningLines()


class _WarningLines:
    """Writes a warning (a source's files left unread, a library's advice) as one ``warning: ...``
    line on stderr, as the commands' other messages are, rather than Python's file:line form; each
    text once per command (torch's DataLoader gives its worker-count advice from two places), and
    under torchrun from rank 0 alone (every rank reads the same source with the same options)."""

    def __init__(self) -> None:
        self.said: set[str] = set()

    def __call__(self, message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: object = None, line: str | None = None) -> None:
        if first_rank() and str(message) not in self.said:
            self.said.add(str(message))
            click.echo(f"warning: {message}", err=True)


@main.command("recipes")
@click.argument("name", required=False)
def recipes_command(name: str | None) -> None:
    """List the built-in recipes, one line each; with NAME, print that recipe's YAML (`degrade
    recipes catface > mine.yaml` starts a recipe of your own)."""
    from degrade.recipe import builtin_recipes, load_recipe

    if name is not None:
        click.echo(_recipe(name).text, nl=False)
        return
    recipes = sorted(builtin_recipes().items())
    width = max(len(name) for name, _ in recipes)
    for name, path in recipes:
        click.echo(f"{name:<{width}}  {load_recipe(path).description}")


def _png_path(context: click.Context, parameter: click.Parameter, path: str | None) -> str | None:
    if path is not None and not path.lower().endswith(".png"):
        raise click.BadParameter(f"the grid is written as PNG (lossless, so every artifact in it is the LQ's own); "
                                 f"give a path ending in .png, got {path!r}")
    if path is not None and not os.path.isdir(os.path.dirname(path) or "."):
        raise click.BadParameter(f"{path}: no folder {os.path.dirname(path)} to write it in")
    return path


@main.command("preview")
@recipe_option
@source_option
@click.option("--out", "-o", default="preview.png", show_default=True, type=click.Path(dir_okay=False),
              callback=_png_path, help="PNG file to write.")
@click.option("--count", "-n", default=16, show_default=True, type=click.IntRange(1, 256), help="Pairs to show.")
@click.option("--start", default=0, show_default=True, type=click.IntRange(0), help="First sample key.")
@click.option("--stride", default=1, show_default=True, type=click.IntRange(1),
              help="Key step between pairs (e.g. 50 to see many identities).")
@seed_option
@device_option
def preview_command(recipe: str, source: str, out: str, count: int, start: int, stride: int, seed: int | None,
                    device: str) -> None:
    """Write a PNG grid of HQ beside LQ, with the key params under each pair."""
    import torch

    from degrade.engine import make_pairs
    from degrade.preview import write_preview
    from degrade.sources import SourceError

    loaded = _recipe(recipe)
    faces = _source(source, loaded.size)
    keys = torch.arange(start, start + count * stride, stride, dtype=torch.int64)
    keys = keys[keys < len(faces)]
    if len(keys) == 0:
        raise click.ClickException(f"source {faces.name} has {len(faces)} samples; --start {start} is past the end")
    with reported(SourceError):
        write_preview(loaded, make_pairs(loaded, faces, keys, device, seed), out)
    click.echo(f"wrote {out}: {counted(len(keys), 'pair')} of recipe {loaded.name}")


@main.command("build")
@recipe_option
@source_option
@click.option("--out", "-o", default=None, type=click.Path(file_okay=False),
              help="Output folder (default: out/<recipe>). Re-running the same build resumes it.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Build only the first N samples.")
@click.option("--batch-size", "-b", default=256, show_default=True, type=click.IntRange(1),
              help="Faces per batch: decoded together by one worker, degraded in one engine call (on a GPU, "
                   "thousands keep it busy).")
@click.option("--shard-size", default=2048, show_default=True, type=click.IntRange(1), help="Pairs per Arrow shard.")
@click.option("--format", "image_format", type=click.Choice(["png", "raw"]), default="png", show_default=True,
              help="`png`: HF Image columns; `raw`: uint8 HxWx3 bytes (fastest to write and read).")
@num_workers_option
@click.option("--attributes", type=click.Path(dir_okay=False, exists=True), default=None,
              help="CSV/TSV of per-sample attributes, its first column 'file' (a path relative to the source, "
                   "e.g. Name/Name_0001.jpg) or 'identity' (an identity's name, e.g. its sub-folder's); "
                   "rows no sample matches are unused.")
@click.option("--strict", is_flag=True, help="Fail on unreadable or wrongly sized images instead of skipping / resizing.")
@seed_option
@device_option
def build_command(recipe: str, source: str, out: str | None, limit: int | None, batch_size: int, shard_size: int,
                  image_format: str, num_workers: int, attributes: str | None, strict: bool, seed: int | None,
                  device: str) -> None:
    """Degrade a source into an Arrow dataset (opens with datasets.load_from_disk).

    Columns: key, identity, identity_name, file (the face's name in the source: its path in a
    folder, `record N` of a .rec), hq, lq, params (what each stage drew) and, with
    --attributes, attributes. Shards are written atomically: an interrupted build resumes
    when the same command runs again and ends byte-identical to an uninterrupted one. Under
    `torchrun --nproc-per-node N -m degrade build ...` the ranks split the shards.
    """
    from degrade.arrow import BuildError, build_dataset, unfinished_progress
    from degrade.sources import SourceError
    from degrade.sources.attributes import Attributes
    from degrade.workers import SharedMemoryFull, WorkerLost

    loaded = _recipe(recipe)
    faces = _source(source, loaded.size, strict)
    target = Path(out) if out else Path("out") / loaded.name

    def stopped(how: str) -> str:
        progress = unfinished_progress(target) or "no shard written"
        return f"{target}: {how}, {progress}; run the same command again to resume"

    with reported(BuildError, SourceError, WorkerLost, SharedMemoryFull), ends_on_stop_signals(stopped):
        table = Attributes(attributes) if attributes else None
        summary = build_dataset(loaded, faces, target, seed=seed, limit=limit, batch_size=batch_size,
                                shard_size=shard_size, device=device, num_workers=num_workers,
                                image_format=image_format, attributes=table)
    if first_rank():
        click.echo(f"wrote {target}: {summary.describe()}")


@main.command("inspect")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--grid", type=click.Path(dir_okay=False), default=None, callback=_png_path,
              help="Also write a PNG grid of pairs, spread evenly over the build.")
@click.option("--count", "-n", default=16, show_default=True, type=click.IntRange(1, 256), help="Pairs in the grid.")
@click.option("--verify", is_flag=True,
              help="Also decode every face, to find one damaged inside a shard (opening a build checks only that "
                   "each shard is whole and holds the pairs written to it); exit 1 naming the first damaged shard.")
@click.option("--num-workers", "-j", default=None, type=click.IntRange(0),
              callback=lambda context, parameter, workers: default_workers() if workers is None else workers,
              help="Processes decoding the faces for --verify (default: every core, at most 16; 0: all in this "
                   "process).")
def inspect_command(folder: str, grid: str | None, count: int, verify: bool, num_workers: int) -> None:
    """Describe a built dataset: schema, counts, recipe, skipped inputs, attribute means, param histograms;
    with --verify, also check that every face decodes."""
    from degrade.arrow import BuildError
    from degrade.inspect import describe_dataset, verify_dataset, write_dataset_grid
    from degrade.sources import SourceError
    from degrade.workers import SharedMemoryFull, WorkerLost

    if given("count") and not grid:
        raise click.UsageError("--count would have no effect: it is the number of pairs in the --grid, which is not given")
    if given("num_workers") and not verify:
        raise click.UsageError("--num-workers would have no effect: its processes decode the faces for --verify, which "
                               "is not given")
    with reported(BuildError, SourceError, WorkerLost, SharedMemoryFull), \
            ends_on_stop_signals(lambda how: f"inspect {how}"):
        click.echo(describe_dataset(folder))
        if grid:
            write_dataset_grid(folder, grid, count)
            click.echo(f"wrote {grid}")
        if verify:
            click.echo(verify_dataset(folder, num_workers))


@main.command("bench")
@recipe_option
@source_option
@device_option
@click.option("--batch-size", "-b", default=256, show_default=True, type=click.IntRange(1),
              help="Pairs per engine call (on a GPU, thousands keep it busy; on a CPU run in chunks of 16).")
@click.option("--n", "pairs", default=2048, show_default=True, type=click.IntRange(1), help="Pairs to time.")
@click.option("--num-workers", "-j", "workers", default=None, type=click.IntRange(1),
              help="Processes of the OpenCV loop and of the engine on a CPU, and the decoding workers of --build "
                   "and --train (default: every core).")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1),
              help="Time the engine and the OpenCV loop in turn this many times each and report each side's best "
                   "(--build and --train run once).")
@click.option("--build", "end_to_end", is_flag=True,
              help="Time `degrade build` end to end (raw and PNG) against an OpenCV loop that decodes, degrades, "
                   "encodes and writes the same pairs.")
@click.option("--train", "train_backbone", default=None, metavar="BACKBONE",
              help="Instead: stream pairs into training steps of this backbone (e.g. iresnet50) and report the "
                   "share of step time spent waiting for data.")
@click.option("--precision", default=None, type=click.Choice(["fp32", "bf16", "fp16"]),
              help="Autocast of the --train steps (default: bf16 on a GPU, fp32 on a CPU).")
def bench_command(recipe: str, source: str, device: str, batch_size: int, pairs: int, workers: int | None,
                  rounds: int, end_to_end: bool, train_backbone: str | None, precision: str | None) -> None:
    """Time the engine and a plain per-image OpenCV loop on the same pairs; print both and their ratio.

    Also prints each stage's rate alone, the engine's and the OpenCV loop's, and the engine's peak
    memory. Compare ratios, not absolute rates: shared machines are noisy (hence the rounds, timed
    in turn).
    """
    from degrade.arrow import BuildError
    from degrade.bench import run_bench, run_build_bench, run_train_bench
    from degrade.ops import OP_NAMES
    from degrade.sources import SourceError
    from degrade.workers import SharedMemoryFull, WorkerLost

    if train_backbone and end_to_end:
        raise click.UsageError("--build and --train time different things; give one of them")
    if given("rounds") and (train_backbone or end_to_end):
        raise click.UsageError("--rounds would have no effect: --build and --train run once")
    if given("precision") and not train_backbone:
        raise click.UsageError("--precision would have no effect: it is the autocast of the --train steps, which "
                               "are not timed without --train")
    loaded = _recipe(recipe)
    own_ops = sorted({leaf.op.name for leaf in loaded.leaves if leaf.op.name not in OP_NAMES})
    if own_ops and not train_backbone:
        raise click.BadParameter(f"the OpenCV loop has no twin of your own op {', '.join(own_ops)}, so only --train "
                                 "can time this recipe", param_hint="--recipe")
    faces = _source(source, loaded.size)
    if train_backbone:
        from trainers.backbones import BACKBONES, INPUT_SIZE

        if train_backbone not in BACKBONES:
            raise click.BadParameter(f"unknown backbone {train_backbone!r}; use one of {', '.join(sorted(BACKBONES))}",
                                     param_hint="--train")
        if loaded.size != INPUT_SIZE:
            raise click.BadParameter(f"recipe {loaded.name!r} makes faces of {loaded.size} px; the backbones take "
                                     f"{INPUT_SIZE}x{INPUT_SIZE} faces", param_hint="--recipe")
        if loaded.makes_native_size:
            raise click.BadParameter(f"recipe {loaded.name!r} makes native-size LQ faces; --train times LRFR steps, "
                                     "which take LQ faces at the input size", param_hint="--recipe")
    with reported(SourceError, BuildError, WorkerLost, SharedMemoryFull), ends_on_stop_signals(lambda how: f"bench {how}"):
        if train_backbone:
            click.echo(run_train_bench(recipe, faces, train_backbone, device, batch_size, pairs, workers, precision))
        elif end_to_end:
            click.echo(run_build_bench(recipe, source, device, batch_size, pairs, workers))
        else:
            click.echo(run_bench(recipe, faces, device, batch_size, pairs, workers, rounds).report())
