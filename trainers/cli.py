"""``degrade train NAME`` and ``degrade eval``: the trainers' command line."""

from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click
import torch

from degrade.cli import (device_option, ends_on_stop_signals, first_rank, given, num_workers_option, reported,
                         seed_option, source_option)
from degrade.keyed import MAX_SEED
from degrade.ops.base import is_weight
from degrade.text import as_ranges, first_few
from trainers.backbones import BACKBONES, INPUT_SIZE, build_backbone
from trainers.checkpoints import CheckpointError, load_backbone_weights, training_checkpoint

if TYPE_CHECKING:  # the sources load when a command runs, not for --help
    from degrade.sources.pairs import BinSource, PairsSource
    from degrade.sources.subset import SubsetSource


def _numbers(text: str, example: str, param_hint: str, ranges_up_to: int | None = None) -> list[int]:
    """The distinct integers of a comma-separated list, sorted; with ``ranges_up_to``, parts may be
    ranges, both ends included ("1-8"), of which numbers above it are cut to the one after it
    (a typed 1-80000000 names 80,000,000 folds)."""
    numbers = set()
    try:
        for part in text.split(","):
            first, dash, last = part.strip().partition("-")
            if ranges_up_to is not None and first and dash:
                if int(first) > int(last):
                    raise ValueError
                numbers.update(range(int(first), min(int(last), ranges_up_to + 1) + 1))
            else:
                numbers.add(int(part))
    except ValueError:
        raise click.BadParameter(f"expected numbers like {example}, got {text!r}", param_hint=param_hint) from None
    return sorted(numbers)


def parse_resolutions(text: str, param_hint: str) -> list[int]:
    """The sides in pixels ``text`` names ("7,14,28"), sorted, each one positive."""
    sides = _numbers(text, "7,14,28", param_hint)
    if min(sides) < 1:
        raise click.BadParameter(f"expected positive sides, got {text!r}", param_hint=param_hint)
    return sides


def parse_folds(text: str | None, protocol: PairsSource | BinSource, pairs: str, param_hint: str) -> list[int] | None:
    """The folds ``text`` names ("7,8", "1-8"), sorted, each one of the folds of ``protocol`` (the pairs
    source read from ``pairs``); None when ``text`` is empty."""
    if not text:
        return None
    folds = _numbers(text, "7,8 or 1-8", param_hint, ranges_up_to=protocol.folds)
    if not set(folds) <= set(range(1, protocol.folds + 1)):
        raise click.BadParameter(f"{pairs} has folds 1-{protocol.folds}; got {text!r}", param_hint=param_hint)
    return folds


# Faces of an insightface .bin (verification pairs) have identity -1, as have the builds made of them.
UNLABELLED = ("its faces have no identity labels (as a .bin verification set's: pairs, not people); a recognition "
              "head learns to tell identities apart, so training needs faces labelled by identity")


def training_source(source: str, size: int, exclude_pairs: str | None, exclude_folds: str | None) -> SubsetSource:
    """The training faces: the source, minus the identities of the excluded folds (default: every
    fold of ``exclude_pairs``), labels renumbered."""
    from degrade.sources import SourceError, open_source
    from degrade.sources.subset import SubsetSource, identities_outside_pairs

    faces = open_source(source, size)
    if bool((faces.identities < 0).all()):
        raise SourceError(f"{faces.name}: {UNLABELLED}")
    keys = torch.arange(len(faces))
    if exclude_pairs:
        protocol = open_source(exclude_pairs, size)
        if not hasattr(protocol, "pairs"):
            raise click.BadParameter(f"{exclude_pairs}: not a pairs protocol (an LFW-style pairs.txt)",
                                     param_hint="--exclude-pairs")
        if bool((protocol.identities < 0).all()):
            raise click.BadParameter(f"{exclude_pairs}: its faces have no identity names (as a .bin verification "
                                     "set's), so it cannot say whose faces to leave out; give the set's pairs.txt",
                                     param_hint="--exclude-pairs")
        folds = (parse_folds(exclude_folds, protocol, exclude_pairs, "--exclude-folds")
                 or list(range(1, protocol.folds + 1)))
        keys = identities_outside_pairs(faces, protocol, folds)
        if len(keys) == 0:
            raise click.BadParameter(f"{exclude_pairs}: every face of {faces.name} is of an identity in its "
                                     f"{'folds' if len(folds) > 1 else 'fold'} {as_ranges(folds)}, so none is left "
                                     "to train on", param_hint="--exclude-pairs")
    return SubsetSource(faces, keys)


# Options that choose how pairs are made on the fly: a build's pairs are read as they were made.
MADE_ON_THE_FLY = {"source": "--source", "recipe": "--recipe", "exclude_pairs": "--exclude-pairs",
                   "exclude_folds": "--exclude-folds", "attribute_file": "--attributes"}


def refuse_unused_options() -> None:
    """A training option that the command's other options would leave without effect is a usage error."""
    params = click.get_current_context().params
    made_on_the_fly = [flag for name, flag in MADE_ON_THE_FLY.items() if given(name)]
    if params["from_dataset"] and made_on_the_fly:
        raise click.UsageError(f"{', '.join(made_on_the_fly)} would have no effect: --from-dataset reads a build's "
                               "pairs as they were made (from its source, with its recipe and attributes)")
    if params["exclude_folds"] and not params["exclude_pairs"]:
        raise click.UsageError("--exclude-folds names folds of --exclude-pairs, which is not given")


def common_training_options(command):
    options = [
        source_option,
        click.option("--recipe", "-r", default=None, metavar="NAME|FILE",
                     help="Recipe making the LQ views, drawn afresh every epoch (default: the trainer's)."),
        click.option("--from-dataset", type=click.Path(file_okay=False, exists=True), default=None,
                     help="Read pairs from a finished `degrade build` instead of making them on the fly "
                          "(the build's one draw per face, every epoch)."),
        click.option("--exclude-pairs", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="A pairs.txt whose identities (in --exclude-folds) are left out of training."),
        click.option("--exclude-folds", default=None,
                     help="Folds of --exclude-pairs to leave out, e.g. 7,8 or 1-8 (default: all its folds)."),
        click.option("--backbone", default="mobilefacenet", show_default=True, type=click.Choice(sorted(BACKBONES)),
                     help="IResNet-18/50/100 (insightface's layout) or the 128-D MobileFaceNet."),
        click.option("--init", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="Start the backbone from this checkpoint."),
        click.option("--steps", default=1000, show_default=True, type=click.IntRange(1),
                     help="Length of the run: the learning-rate schedule spans these steps."),
        click.option("--max-steps", type=click.IntRange(1), default=None, help="Stop after this many steps (smoke runs)."),
        click.option("--batch-size", "-b", default=128, show_default=True, type=click.IntRange(1),
                     help="Pairs per step on each rank; under torchrun a step learns from ranks x this many."),
        click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adamw"]),
                     help="SGD with momentum 0.9, or AdamW."),
        click.option("--lr", default=0.01, show_default=True, type=click.FloatRange(0, min_open=True),
                     help="Learning rate after --warmup, before the schedule lowers it."),
        click.option("--weight-decay", default=5e-4, show_default=True, type=click.FloatRange(0),
                     help="The optimiser's weight decay, on every trained parameter."),
        click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "step"]),
                     help="cosine: down to 0 at the last step; step: a tenth at half of the steps, a hundredth at "
                          "three quarters."),
        click.option("--warmup", default=0, show_default=True, type=click.IntRange(0),
                     help="Warm-up steps, fewer than --steps."),
        click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "bf16", "fp16"]),
                     help="Autocast of the steps (fp16 with loss scaling); weights stay fp32."),
        click.option("--checkpoint-every", default=500, show_default=True, type=click.IntRange(1),
                     help="Steps between checkpoints (last.pt and a step-*.pt); the last step always saves one."),
        click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
                     help="Run folder: log.csv, last.pt (resumed when present), step-*.pt backbones."),
        device_option,
        num_workers_option,
        click.option("--seed", default=0, show_default=True, type=click.IntRange(0, MAX_SEED),
                     help="Seed of the weights' initialisation and the epochs' order, 0 to 4294967295 (the LQ "
                          "draws follow the recipe's seed)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# Not common to every trainer: CATFace's recognition heads are AdaFace (the paper's) and BTNet's
# classifier holds the trunk's class centres, fixed; BTNet's backbone is all it trains.
head_option = click.option("--head", default="arcface", show_default=True,
                           type=click.Choice(["arcface", "cosface", "adaface"]), help="Margin softmax on the embeddings.")
frozen_backbone_option = click.option(
    "--frozen-backbone-steps", default=0, show_default=True, type=click.IntRange(0),
    help="First steps train only the heads (warms a new head up on a pretrained backbone); fewer than --steps.")


@click.group("train")
def train_group() -> None:
    """Train a model on HQ/LQ pairs streamed from the engine (or read from a build).

    A run writes checkpoints to --out and resumes from its last one when the same command runs
    again (--max-steps, --checkpoint-every and the batch size may change; another model, optimiser,
    schedule or other pairs are refused). SIGTERM (Slurm's preemption, `kill`) ends it after the
    step under way with a checkpoint there; Ctrl-C, or a second SIGTERM, ends it at once. `torchrun
    --nproc-per-node N -m degrade train ...` trains with DDP, each rank on its own GPU and its own
    share of every epoch."""


@train_group.command("lrfr")
@common_training_options
@head_option
@frozen_backbone_option
@click.option("--p", "power", default="2", show_default=True, type=click.Choice(["1", "2"]),
              callback=lambda _c, _p, v: float(v), help="Exponent of L_LogExp.")
@click.option("--contrast-weight", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Weight of L_LogExp (0: off).")
@click.option("--hq-only", is_flag=True, help="Fine-tune on HQ faces only (no LQ loss, no contrast).")
@click.option("--teacher", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Frozen teacher for the HQ target: weights of a --backbone network, the student's architecture "
                   "(default: the network itself, stop-gradient).")
def train_lrfr(power: float, contrast_weight: float, hq_only: bool, teacher: str | None, **options) -> None:
    """LRFR: MAug pairs, margin softmax on HQ and LQ, L_LogExp between LQ and HQ embeddings."""
    shaping_contrast = [flag for name, flag in (("power", "--p"), ("teacher", "--teacher")) if given(name)]
    if hq_only and (shaping_contrast or given("contrast_weight")):
        raise click.UsageError("--contrast-weight, --p and --teacher would have no effect: --hq-only trains on HQ "
                               "faces alone, without L_LogExp")
    if contrast_weight == 0 and shaping_contrast:
        raise click.UsageError(f"{', '.join(shaping_contrast)} would have no effect: --contrast-weight 0 turns "
                               "L_LogExp off")
    spec = {"trainer": "lrfr", "use_lq": not hq_only, "contrast_weight": 0.0 if hq_only else contrast_weight,
            "p": power, "teacher": teacher is not None}

    def load_teacher(trainer) -> None:
        if teacher:
            try:
                load_backbone_weights(trainer.teacher, teacher)
            except CheckpointError as error:
                raise CheckpointError(f"--teacher: the teacher's architecture is the student's (--backbone "
                                      f"{options['backbone']}); {error}") from None

    run(spec, "maug", load_teacher, **options)


@train_group.command("lgaf")
@common_training_options
@head_option
@frozen_backbone_option
@click.option("--mode", default="lgf", show_default=True, type=click.Choice(["local", "global", "concat", "lgf"]),
              help="Embedding: MHMS local only, global only, plain concatenation, or LGF fusion.")
@click.option("--heads", "mhms_heads", default=4, show_default=True, type=click.IntRange(1), help="MHMS heads b.")
def train_lgaf(mode: str, mhms_heads: int, **options) -> None:
    """LGAF: MHMS local features, the global embedding, and their norm-weighted fusion (LGF)."""
    if mode == "global" and given("mhms_heads"):
        raise click.UsageError("--heads would have no effect: --mode global uses no MHMS heads")
    run({"trainer": "lgaf", "mode": mode, "heads": mhms_heads}, "lgaf", **options)


@train_group.command("catface")
@common_training_options
@frozen_backbone_option
@click.option("--stage", type=click.Choice(["1", "2"]), default="1", show_default=True,
              help="1: backbone, attribute branch and self-attention distillation; 2: the fusion, on stage 1 frozen.")
@click.option("--attributes", "attribute_file", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Stage 1: CSV/TSV of soft-biometric labels keyed by file or identity (pairs read with "
                   "--from-dataset carry the build's own attributes instead).")
@click.option("--stage1", "stage1_checkpoint", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Stage 2: the stage-1 run's last.pt.")
@click.option("--fusion", default="catf", show_default=True, type=click.Choice(["none", "concat", "add", "catf"]),
              help="Stage 2: how the recognition and attribute features meet (catf: the paper's cross-attention; "
                   "the others its ablations).")
def train_catface(stage: str, attribute_file: str | None, stage1_checkpoint: str | None, fusion: str, **options) -> None:
    """CATFace: stage 1 (AdaFace + attributes + self-attention distillation), stage 2 (fusion)."""
    from degrade.sources.attributes import Attributes
    from trainers.catface import CATFACE_ATTRIBUTES

    from_dataset = options["from_dataset"]
    if stage == "1" and not (attribute_file or from_dataset):
        raise click.UsageError("stage 1 needs --attributes (or --from-dataset of a build made with --attributes)")
    if stage == "2" and not stage1_checkpoint:
        raise click.UsageError("stage 2 needs --stage1 (the stage-1 run's last.pt)")
    if stage == "2" and attribute_file:
        raise click.UsageError("--attributes is for stage 1: stage 2 trains the fusion on the stage-1 model's columns")
    if stage == "1" and (given("stage1_checkpoint") or given("fusion")):
        raise click.UsageError("--stage1 and --fusion are for stage 2: stage 1 trains the backbone and its branches")
    attributes, stage1 = None, None
    if stage == "1":
        from degrade.arrow import BuildError
        from degrade.built import BuiltPairs
        from degrade.sources import SourceError

        with reported(BuildError, SourceError):
            table = None if from_dataset else Attributes(attribute_file)
            names = table.names if table else BuiltPairs(from_dataset).attribute_names
            columns = CATFACE_ATTRIBUTES + (("Female",) if "Female" in names else ())
            attributes = table.select(columns) if table else None
    else:
        stage1 = _read_stage1(stage1_checkpoint, options["backbone"])
        columns = tuple(stage1["spec"]["columns"])
        options["backbone"] = stage1["spec"]["backbone"]
    spec = {"trainer": "catface", "stage": int(stage), "columns": list(columns)}
    if stage1 is not None:  # stage 2 may train on other faces than stage 1 (its head is not used)
        spec |= {"fusion": fusion, "stage1_classes": stage1["spec"]["classes"]}

    def load_stage1(trainer) -> None:
        if stage1 is not None:
            trainer.stage1.load_state_dict(stage1["trainer"])

    run(spec, "catface", load_stage1, attributes=attributes,
        attribute_columns=list(columns) if stage == "1" else (), **options)


def _read_stage1(path: str, backbone: str) -> dict:
    """The CATFace stage-1 checkpoint at ``path`` that stage 2 fuses the branches of; ``backbone``:
    the --backbone option, which stage 2 takes from stage 1 unless it names another (refused)."""
    for option, why in (("init", "the stage-1 model's weights replace it"),
                        ("frozen_backbone_steps", "the stage-1 model, backbone included, stays frozen throughout")):
        if given(option):
            raise click.UsageError(f"--{option.replace('_', '-')} would have no effect in stage 2: {why}")
    try:
        stage1 = training_checkpoint(path)
    except CheckpointError as error:
        raise click.BadParameter(str(error), param_hint="--stage1") from None
    spec = stage1["spec"] or {}
    if spec.get("trainer") != "catface" or spec.get("stage") != 1:
        trained = spec.get("trainer", "no named trainer") + (f" stage {spec['stage']}" if "stage" in spec else "")
        raise click.BadParameter(f"{path} is not a CATFace stage-1 checkpoint (its run trained {trained}); give the "
                                 "last.pt of a `degrade train catface --stage 1` run", param_hint="--stage1")
    if given("backbone") and backbone != spec["backbone"]:
        raise click.BadParameter(f"{backbone}: the stage-1 model of {path} is built on {spec['backbone']}, and stage 2 "
                                 "trains on that model (leave --backbone out)", param_hint="--backbone")
    return stage1


@train_group.command("btnet")
@common_training_options
@click.option("--sides", default="7,14,28,56", show_default=True, help="Branch sides (native LQ inputs).")
@click.option("--selection", default="ceil", show_default=True, type=click.Choice(["floor", "nearest", "ceil"]),
              help="Which branch a face of another side goes to (saved with the model; eval can override).")
@click.option("--branch-blocks", default=1, show_default=True, type=click.IntRange(0), help="Residual blocks per branch.")
@click.option("--loss-weights", default="1,1,0", show_default=True,
              help="Weights of feature MSE, embedding (1 - cos) and the fixed trunk-centre ArcFace classifier.")
def train_btnet(sides: str, selection: str, branch_blocks: int, loss_weights: str, **options) -> None:
    """BTNet: branches for native small faces, implanted into the frozen trunk (--init), distilled from it."""
    try:
        weights = [float(w) for w in loss_weights.split(",")]
    except ValueError:
        weights = []
    if len(weights) != 3 or not all(is_weight(w) for w in weights) or not any(weights):
        raise click.BadParameter(f"expected three numbers >= 0, not all 0, like 1,1,1; got {loss_weights!r}",
                                 param_hint="--loss-weights")
    if not options["init"]:
        warnings.warn("no --init: the trunk is untrained; BTNet distils from a trunk trained on HQ faces")
    run({"trainer": "btnet", "sides": parse_resolutions(sides, "--sides"), "selection": selection,
         "blocks": branch_blocks, "loss_weights": weights}, "btnet", **options)


def run(spec: dict, default_recipe: str, load_weights=None, attributes=None, attribute_columns=(),
        **options) -> None:
    """Shared by every `degrade train NAME`: data, the trainer ``spec`` describes, loop.

    ``load_weights(trainer)`` fills weights that come from other files (a teacher, a stage 1).
    ``attributes`` (an Attributes table) joins pairs made on the fly; ``attribute_columns`` picks
    the attributes of pairs read from a build (none by default: only CATFace's stage 1 learns them).
    ``options``: the command's; ``head`` and ``frozen_backbone_steps`` only where the trainer has them.
    """
    from degrade.arrow import BuildError
    from degrade.distributed import backend_for, join_torchrun
    from degrade.workers import SharedMemoryFull, WorkerLost
    from degrade.recipe import RecipeError, load_recipe
    from degrade.sources import SourceError
    from degrade.stream import PairStream
    from trainers.loop import CheckpointNotSaved, RunFolderBusy, TrainConfig, TrainingDiverged, train
    from trainers.registry import build_trainer

    frozen_backbone_steps = options.get("frozen_backbone_steps", 0)
    if options["warmup"] >= options["steps"]:
        raise click.BadParameter(f"{options['warmup']} warm-up steps leave none of the {options['steps']} --steps at "
                                 "the full learning rate", param_hint="--warmup")
    if frozen_backbone_steps >= options["steps"]:
        raise click.BadParameter(f"{frozen_backbone_steps} frozen-backbone steps leave none of the "
                                 f"{options['steps']} --steps training the backbone",
                                 param_hint="--frozen-backbone-steps")
    refuse_unused_options()
    refuse_other_folder(Path(options["out"]))
    device = torch.device(options["device"])
    join_torchrun(backend_for(device))  # before the stream, which takes its share of each epoch from the job
    stream_options = dict(batch_size=options["batch_size"], device=device, num_workers=options["num_workers"],
                          shuffle_seed=options["seed"])
    with reported(RecipeError, SourceError, BuildError, ValueError):
        if options["from_dataset"]:
            stream = PairStream.from_dataset(options["from_dataset"], attribute_columns, **stream_options)
        else:
            recipe = load_recipe(options["recipe"] or default_recipe)
            faces = training_source(options["source"], recipe.size, options["exclude_pairs"], options["exclude_folds"])
            if options["exclude_pairs"] and first_rank():
                left_out = len(faces.source) - len(faces)
                why = "" if left_out else " (no identity name of the source is in those folds)"
                click.echo(f"training on {len(faces):,} faces of {faces.num_identities:,} identities; "
                           f"--exclude-pairs left out {left_out:,} faces{why}", err=True)
            stream = PairStream.from_source(recipe, faces, attributes=attributes, **stream_options)
        classes = stream.source.num_identities
    if classes == 0:  # a build of unlabelled faces (made on the fly, they are refused with their source)
        raise click.ClickException(f"{stream.source.name}: {UNLABELLED}")
    if classes == 1:
        raise click.ClickException(f"{stream.source.name}: faces of one identity; a recognition head learns to tell "
                                   "identities apart, so training needs two or more")
    takes_native = spec["trainer"] == "btnet"
    made_by = f"{options['from_dataset']}: its recipe" if options["from_dataset"] else "recipe"
    if stream.recipe.makes_native_size != takes_native:
        kind = {True: "native-size LQ faces (no up-sampling)", False: "LQ faces at the input size"}
        raise click.ClickException(f"{made_by} {stream.recipe.name!r} makes {kind[stream.recipe.makes_native_size]}; "
                                   f"{spec['trainer']} trains on {kind[takes_native]} (e.g. the {default_recipe} recipe)")
    if stream.recipe.size != INPUT_SIZE:
        raise click.ClickException(f"{made_by} {stream.recipe.name!r} makes faces of {stream.recipe.size} px; the "
                                   f"backbones {spec['trainer']} trains take {INPUT_SIZE}x{INPUT_SIZE} faces (a recipe "
                                   f"of size {INPUT_SIZE})")
    spec = {**spec, "backbone": options["backbone"], "classes": classes}
    if "head" in options:
        spec["head"] = options["head"]
    with reported(ValueError):
        torch.manual_seed(options["seed"])  # the weights not loaded from a file (heads, branches, fusion) start alike
        trainer = build_trainer(spec, build_backbone(options["backbone"], options["init"]))
        if load_weights is not None:
            load_weights(trainer)
    config = TrainConfig(out=Path(options["out"]), steps=options["steps"], max_steps=options["max_steps"],
                         optimizer=options["optimizer"], lr=options["lr"], weight_decay=options["weight_decay"],
                         schedule=options["schedule"], warmup_steps=options["warmup"],
                         frozen_backbone_steps=frozen_backbone_steps, precision=options["precision"],
                         checkpoint_every=options["checkpoint_every"], seed=options["seed"])
    # An --out that cannot be written (a checkpoint too), a last.pt there that cannot be read, another
    # run training there, a worker killed, a batch with no readable face, weights gone NaN; Ctrl-C,
    # and SIGTERM: the run ends after the step under way, with a checkpoint there (a second one ends
    # it at once).
    failures = (CheckpointError, CheckpointNotSaved, WorkerLost, SharedMemoryFull, SourceError, TrainingDiverged,
                RunFolderBusy)
    with (reported(*failures),
          ends_on_stop_signals(functools.partial(_stopped_training, config.out), finish_first=True) as stop):
        rows = train(trainer, stream, config, device, stop=stop, command={"spec": spec, **options})
    if not first_rank():  # under torchrun every rank ran the same steps; one says so
        return
    if rows:
        click.echo(f"step {rows[-1]['step']}: loss {rows[-1]['loss']:.4f} (first logged {rows[0]['loss']:.4f}); "
                   f"checkpoints in {config.out}")
    else:
        click.echo(f"{config.out}: nothing to train, the run is at step {config.end_step}")


# What a run folder holds before its first last.pt: what a run starting there may find.
RUN_FILES = re.compile(r"command\.json|log\.csv|tensorboard|(last|step-\d+)\.pt(\.partial)?")


def refuse_other_folder(out: Path) -> None:
    """A run starting afresh in an --out that holds other things than a run's files (a build's
    shards, a dataset: an --out given by mistake) is refused before any work, as a build refuses
    such a folder; the run would write its checkpoints and log among them."""
    if not out.is_dir() or (out / "last.pt").exists():
        return
    others = sorted(path.name for path in out.iterdir() if not RUN_FILES.fullmatch(path.name))
    if others:
        raise click.ClickException(f"{out}: holds files that are not a training run's ({first_few(others)}); use an "
                                   "empty or new --out")


def _stopped_training(out: Path, how: str) -> str:
    """What to say when a run stops on Ctrl-C or SIGTERM: where it can resume from."""
    saved = sorted(out.glob("step-*.pt"))
    if not saved:
        return f"{out}: {how} before its first checkpoint; running the same command again starts it afresh"
    return (f"{out}: {how}; run the same command again to resume from its last checkpoint, "
            f"step {int(saved[-1].stem.removeprefix('step-')):,}")


def open_model(text: str, selection: str | None) -> tuple[str, torch.nn.Module]:
    """``NAME=BACKBONE[:WEIGHTS]`` (a plain backbone) or ``NAME=CHECKPOINT`` (a `degrade train` run's
    last.pt or step-*.pt, rebuilt with its own head, fusion or branches) -> (name, model)."""
    from trainers.registry import load_trained

    name, _, model_spec = text.partition("=")
    backbone_name, colon, weights = model_spec.partition(":")
    if name and backbone_name in BACKBONES:
        if colon and not weights:  # e.g. an unset shell variable: the untrained backbone is not what was asked
            raise click.BadParameter(f"no weights file after {model_spec!r} in {text!r}; leave out the ':' for an "
                                     "untrained backbone", param_hint="--model")
        if not weights:
            click.echo(f"{name}: an untrained {backbone_name} (no weights given; {name}={backbone_name}:WEIGHTS loads "
                       "them)", err=True)
        try:
            return name, build_backbone(backbone_name, weights or None)
        except CheckpointError as error:
            raise click.BadParameter(str(error), param_hint="--model") from None
    if not (name and Path(model_spec).is_file()):
        raise click.BadParameter(f"expected NAME=BACKBONE[:WEIGHTS] with a backbone of {', '.join(sorted(BACKBONES))}, "
                                 f"or NAME=CHECKPOINT of a training run; got {text!r}", param_hint="--model")
    try:
        model = load_trained(model_spec)
    except ValueError as error:
        raise click.BadParameter(f"{error}; for plain backbone weights name the backbone, e.g. "
                                 f"{name}=mobilefacenet:{model_spec}", param_hint="--model") from None
    if selection is not None and hasattr(model.trainer.backbone, "selection"):
        model.trainer.backbone.selection = selection
    return name, model


@click.command("eval")
@click.option("--model", "models", multiple=True, required=True, metavar="NAME=BACKBONE[:WEIGHTS] | NAME=CHECKPOINT",
              help="A model to evaluate (repeatable): a backbone with weights, e.g. teacher=mobilefacenet:068.ckpt, "
                   "or a training run's checkpoint, e.g. lgf=runs/lgaf/last.pt.")
@click.option("--selection", type=click.Choice(["floor", "nearest", "ceil"]), default=None,
              help="BTNet models: route probes to branches this way (default: as trained).")
@click.option("--pairs", required=True, type=click.Path(dir_okay=False, exists=True),
              help="LFW-style pairs.txt (images in an images/ folder beside it) or an insightface .bin.")
@click.option("--folds", default=None, help="Only these folds of the pairs file, e.g. 7,8 or 1-8 (default: all).")
@click.option("--resolutions", default="7,14,20,112", show_default=True, help="Probe sides in pixels.")
@click.option("--recipe", "-r", "probe_recipe", default=None, metavar="NAME|FILE",
              help="Also degrade every probe with this recipe (e.g. catface, lgaf) before reducing it to each "
                   "resolution (at the faces' own size: the recipe alone). Each face is drawn by its key, so every "
                   "model sees the same probes; the HQ side of cross-resolution pairs and the gallery stay clean.")
@seed_option
@click.option("--identification", "gallery", type=click.Path(exists=True), default=None,
              help="Also rank-1/5 identification on this folder source, among identities with two or more images "
                   "(the first image of each is the gallery, the others probes).")
@click.option("--out", "-o", type=click.Path(file_okay=False), default=None,
              help="Folder for results.json and accuracy.png.")
@device_option
def eval_command(models: tuple[str, ...], selection: str | None, pairs: str, folds: str | None, resolutions: str,
                 probe_recipe: str | None, seed: int | None, gallery: str | None, out: str | None,
                 device: str) -> None:
    """Verification (k-fold accuracy, TAR@FAR, AUC) same- and cross-resolution, and identification."""
    from degrade.recipe import RecipeError, load_recipe
    from degrade.sources import SourceError, open_source
    from trainers.evaluate import (ProbeRecipe, evaluate_pairs, format_table, identification,
                                   identification_faces, plot_accuracy, verification_faces, write_results)

    sides = parse_resolutions(resolutions, "--resolutions")
    if seed is not None and probe_recipe is None:
        raise click.UsageError("--seed would have no effect: it seeds the probes' --recipe, which is not given")
    with reported(SourceError, RecipeError):
        protocol = open_source(pairs)
        gallery_source = open_source(gallery) if gallery else None
        recipe = load_recipe(probe_recipe) if probe_recipe is not None else None
    degraded_by = None if recipe is None else ProbeRecipe(recipe, recipe.seed if seed is None else seed)
    if recipe is not None and (recipe.makes_native_size or recipe.size != protocol.size):
        made = "native-size LQ faces" if recipe.makes_native_size else f"LQ faces of {recipe.size} px"
        raise click.BadParameter(f"recipe {recipe.name!r} makes {made}; probes are degraded at the {protocol.size} px "
                                 f"of the faces of {pairs}, then reduced to each resolution", param_hint="--recipe")
    if not hasattr(protocol, "pairs"):
        raise click.ClickException(f"{pairs}: not a pairs protocol (.txt pairs file or .bin)")
    if max(sides) > protocol.size:  # it would be evaluated at the faces' own size, under another name
        raise click.BadParameter(f"{max(sides)} px is above the {protocol.size} px of the faces of {pairs}",
                                 param_hint="--resolutions")
    chosen_folds = parse_folds(folds, protocol, pairs, "--folds")
    if chosen_folds is not None and len(chosen_folds) < 2:
        raise click.BadParameter(f"k-fold accuracy needs two or more folds; got {folds!r}", param_hint="--folds")
    torch.manual_seed(0)  # untrained backbones (no weights given) evaluate the same on every run
    opened = [open_model(text, selection) for text in models]  # every --model checked before any work
    if selection is not None and not any(getattr(model, "native_input", False) for _, model in opened):
        raise click.UsageError("--selection would have no effect: no --model is a BTNet, whose branches it chooses")
    names = [name for name, _ in opened]
    if len(set(names)) < len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise click.BadParameter(f"two models are named {twice!r}; give each a NAME of its own", param_hint="--model")
    with reported(SourceError):  # every face read once, for every model, before any model's work
        pairs_faces = verification_faces(protocol, chosen_folds)
    gallery_faces = None
    if gallery_source is not None:
        try:
            gallery_faces = identification_faces(gallery_source, torch.arange(len(gallery_source)))
        except ValueError as error:  # a face that cannot be read, or no identity with two faces
            raise click.BadParameter(str(error), param_hint="--identification") from None
    made_out = bool(out) and not Path(out).exists()
    if out:
        with reported():  # made once every input is checked, and before the evaluation, not after it
            Path(out).mkdir(parents=True, exist_ok=True)
    runs = {}
    with ends_on_stop_signals(lambda how: f"eval {how}: no results written"):
        try:
            for name, model in opened:
                results = evaluate_pairs(model, pairs_faces, sides, device, progress=f"{name}: verification",
                                         degraded_by=degraded_by)
                if gallery_faces is not None:
                    results["identification"] = identification(model, gallery_faces, sides, device,
                                                               progress=f"{name}: identification",
                                                               degraded_by=degraded_by)
                if degraded_by is not None:
                    results["probe_recipe"] = degraded_by.describe()
                runs[name] = results
                click.echo(format_table(name, results))
        except BaseException:  # Ctrl-C, SIGTERM or a failure: the folder this run made holds nothing, so it goes
            if made_out and not any(Path(out).iterdir()):
                Path(out).rmdir()
            raise
    if out:
        with reported():
            write_results(runs, Path(out) / "results.json")
            plot_accuracy(runs, Path(out) / "accuracy.png")
        click.echo(f"wrote {out}/results.json and {out}/accuracy.png")
