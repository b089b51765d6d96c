"""One training loop for every trainer.

A trainer is an ``nn.Module`` whose ``forward(batch)`` returns ``(loss, metrics)`` for a
batch of pairs (its ``spec``, when it has one, goes into every checkpoint; see
:mod:`trainers.registry`) from :class:`degrade.stream.PairStream` (made on the fly or read from a build).
The loop adds the optimiser (SGD or AdamW), warm-up then cosine or step schedule, bf16 / fp16
autocast, DDP under ``torchrun``, a tqdm bar, a CSV log (and TensorBoard when installed), and
checkpoints every N steps that resume the same run, also on a different number of ranks: the
checkpoint counts samples seen, and the stream restarts at that sample's epoch and batch. Asked to
stop (``train(..., stop=)``; the CLI asks on SIGTERM), a run ends after the step under way with
a checkpoint there, on every rank after the same step. A run whose weights stop being finite
numbers (a learning rate too high for the model) ends with :class:`TrainingDiverged` at the next
step it logs or saves, and no checkpoint of it is written.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from degrade.distributed import backend_for, join_torchrun
from degrade.locks import lock_exclusively
from degrade.machine import out_of_space
from degrade.progress import progress_bar
from degrade.stream import PairStream
from degrade.text import counted, differences
from degrade.workers import WorkerLost
from trainers.checkpoints import CheckpointError, non_finite, training_checkpoint


@dataclasses.dataclass
class TrainConfig:
    out: Path
    steps: int                      # length of the schedule
    max_steps: int | None = None    # stop earlier (smoke runs); the schedule still spans ``steps``
    optimizer: str = "sgd"          # sgd | adamw
    lr: float = 0.01
    weight_decay: float = 5e-4
    momentum: float = 0.9
    schedule: str = "cosine"        # cosine | step
    warmup_steps: int = 0
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the run where lr drops 10x
    precision: str = "fp32"         # fp32 | bf16 | fp16
    frozen_backbone_steps: int = 0  # first steps train everything but ``trainer.backbone`` (head warm-up)
    checkpoint_every: int = 500
    log_every: int = 10
    seed: int = 0
    progress: bool = True

    @property
    def end_step(self) -> int:
        """The step this call of the run ends at: ``steps``, or ``max_steps`` when it is earlier."""
        return min(self.steps, self.max_steps or self.steps)


def both_views(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """HQ then LQ images of a batch as one float tensor in [0, 1] (2N, 3, S, S), and their (2N,) labels."""
    images = torch.cat([batch["hq"], batch["lq"]]).float() / 255
    return images, torch.cat([batch["identity"], batch["identity"]])


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based)."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return 0.1 ** sum(progress >= m for m in config.milestones)


def make_optimizer(parameters: Iterable[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """``config``'s optimiser (SGD with momentum, or AdamW) over the ``parameters`` that require gradients."""
    trainable = [p for p in parameters if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use sgd or adamw")


class _StopVote:
    """Whether to stop, agreed by every rank: an all-reduce over gloo on the host (no wait for the
    GPU) after each fetch; alone, no communication."""

    def __init__(self, world: int) -> None:
        self.group = dist.new_group(backend="gloo") if world > 1 else None

    def any_asked(self, asked: bool) -> bool:
        """Whether any rank was asked to stop (``asked`` is this rank's answer)."""
        if self.group is None:
            return asked
        flag = torch.tensor([int(asked)])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())

    def wait_for_all(self) -> None:
        """Return once every rank has come here: torchrun stops the other ranks as soon as one ends
        with an error code, as a stopped run does, and rank 0 may still be writing its checkpoint."""
        if self.group is not None:
            dist.barrier(group=self.group)


# What a resumed run may change: where it stops early, and how often it reports and saves.
# Any other difference (the model, the optimiser, the schedule) makes it another run.
RESUMABLE_CHANGES = ("out", "max_steps", "checkpoint_every", "log_every", "progress")


def _run_differences(state: dict, spec: dict | None, data: dict, config: TrainConfig) -> str:
    """How the run saved in ``state`` (a ``last.pt``) differs from a run of ``spec``, on pairs made
    of ``data`` (:meth:`PairStream.made_of`), with ``config``, e.g. "backbone mobilefacenet there,
    iresnet18 here; lr 0.01 there, 0.1 here"; empty when it does not. A checkpoint saved before
    runs recorded their pairs (or some of what they are made of) is taken to hold these; what only
    the saved pairs record (a build's source, where today's pairs are made on the fly) is not
    compared, the kind of pairs tells them apart."""
    def comparable(spec: dict | None, data: dict, config: dict) -> dict:
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items() if k not in RESUMABLE_CHANGES}
        return {**(spec or {}), **data, **settings}

    saved = state.get("data", {})
    there = comparable(state.get("spec"), data | saved, state.get("config", {}))
    return differences(there, comparable(spec, saved | data, dataclasses.asdict(config)))


class TrainingDiverged(RuntimeError):
    """The model's weights or statistics are no longer finite numbers: the run cannot go on."""


class CheckpointNotSaved(RuntimeError):
    """A checkpoint that could not be written (a full disk, a lost mount): the run cannot keep its steps."""


def _save(path: Path, state: dict) -> None:
    """``torch.save`` to ``path`` through a ``.partial`` file renamed over it, so a file there before
    stays whole until the new one is. An OSError naming ``path`` where it cannot be written (the
    ``.partial`` removed): torch reports a failed write as 'unexpected pos 3131136 vs 3131024',
    with the OSError of a file it was handed as its context."""
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as file:
            torch.save(state, file)
    except (OSError, RuntimeError) as error:
        partial.unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else error.__context__
        if not isinstance(cause, OSError):
            raise
        raise OSError(cause.errno, cause.strerror or str(cause), str(path)) from error
    os.replace(partial, path)


class DataClock:
    """How much of each step goes to making its batch (decoding, host-to-device copy, the engine).

    On a GPU the split is read from CUDA events on the training stream, since kernels run
    asynchronously: time between "fetching" and "fetched" there is time the step could not start
    (waiting for the batch's engine work on the prefetching stream, or the device idle while the
    host waits for a batch). On a CPU, the host clock.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[tuple] = []   # (fetching, fetched) per step since the last count
        self.pending = None

    def _now(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def fetching(self) -> None:
        self.pending = self._now()

    def fetched(self) -> None:
        self.marks.append((self.pending, self._now()))

    def data_fraction(self) -> float:
        """Share of the steps since the last call spent making their batches; starts a new count."""
        if not self.marks:
            return float("nan")
        now = self._now()
        if self.cuda:
            now.synchronize()
            span = lambda a, b: a.elapsed_time(b)  # noqa: E731
        else:
            span = lambda a, b: b - a  # noqa: E731
        waiting = sum(span(fetching, fetched) for fetching, fetched in self.marks)
        fraction = waiting / span(self.marks[0][0], now)
        self.marks = []
        return fraction


class _Log:
    """CSV rows (and TensorBoard scalars when the package is there), rank 0 only."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.path, self.enabled, self.fields, self.board = out / "log.csv", enabled, None, None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.board = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                self.board = None

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        if self.fields is None:
            self.fields = list(row)
            if not self.path.exists():
                with open(self.path, "w", newline="") as handle:
                    csv.DictWriter(handle, self.fields).writeheader()
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, self.fields, extrasaction="ignore").writerow(row)
        if self.board is not None:
            for name, value in row.items():
                if name != "step":
                    self.board.add_scalar(name, value, row["step"])


class _Checkpoints:
    """A run's checkpoints: ``last.pt`` (all it needs to resume: model, optimiser, schedule, scaler,
    samples seen, config, spec and what its pairs are made of) and, at each step saved,
    ``step-NNNNNNN.pt`` (the backbone alone, and the whole model with its spec). Under torchrun
    every rank saves at the same steps, and only the one that ``writes`` (rank 0) writes the files."""

    def __init__(self, out: Path, trainer: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 config: TrainConfig, data: dict, writes: bool) -> None:
        self.out, self.trainer, self.optimizer, self.scheduler, self.scaler = out, trainer, optimizer, scheduler, scaler
        self.config, self.data, self.writes = config, data, writes
        self.spec = getattr(trainer, "spec", None)
        self.last = out / "last.pt"
        self.saved_step: int | None = None   # the step last.pt holds, None before the run's first checkpoint

    def resume(self) -> tuple[int, int]:
        """Load the run's state from its ``last.pt`` into the objects given, if it has one; returns
        (step, samples seen), (0, 0) for a new run. Refuses a checkpoint saved by another command,
        naming what differs."""
        if not self.last.exists():
            return 0, 0
        try:
            state = training_checkpoint(self.last)
        except CheckpointError as error:
            raise CheckpointError(f"{error}. A run writes it whole or not at all, so it was damaged since (a copy cut "
                                  "short?): put the run's last.pt back, or give this command a new --out") from None
        changed = _run_differences(state, self.spec, self.data, self.config)
        if changed:
            raise CheckpointError(f"{self.last}: saved by a run of another command ({changed}); run that command "
                                  "to resume it, or give this one a new --out")
        self.trainer.load_state_dict(state["trainer"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # e.g. a version that trained other parameters of the same model
            raise CheckpointError(f"{self.last}: its optimizer does not fit this run's trainable parameters ({error}); "
                                  "saved by another version of degrade? Give this run a new --out") from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.saved_step = state["step"]
        return state["step"], state["samples_seen"]

    def refuse_diverged(self, step: int) -> None:
        """Raise :class:`TrainingDiverged` if the trainer's weights are no longer finite after ``step``,
        saying which checkpoint is the run's last sound one."""
        broken = non_finite(self.trainer.state_dict())
        if not broken:
            return
        wider = ", or --precision bf16 (fp16's range is narrow)" if self.config.precision == "fp16" else ""
        raise TrainingDiverged(f"step {step:,}: the model's weights are no longer finite numbers (NaN or inf in "
                               f"{counted(len(broken), 'tensor')}, e.g. {broken[0]}), the training diverged; "
                               f"{self._kept()}. Start a new run (another --out) with a lower --lr or a --warmup{wider}")

    def _kept(self) -> str:
        """What the run has kept: 'runs/x/last.pt still holds step 1,500', or that nothing is saved."""
        return (f"{self.last} still holds step {self.saved_step:,}" if self.saved_step is not None
                else "no checkpoint was saved")

    def save(self, step: int, samples_seen: int) -> None:
        """Save the run at ``step``; weights that are no longer finite are refused (:meth:`refuse_diverged`),
        and a checkpoint that cannot be written ends the run (:class:`CheckpointNotSaved`)."""
        self.refuse_diverged(step)
        if self.writes:
            config = {**dataclasses.asdict(self.config), "out": str(self.config.out)}
            trainer = self.trainer.state_dict()
            last = {"trainer": trainer, "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "step": step,
                    "samples_seen": samples_seen, "config": config, "spec": self.spec, "data": self.data}
            weights = {"backbone": self.trainer.backbone.state_dict(), "trainer": trainer, "step": step,
                       "spec": self.spec}
            try:
                _save(self.last, last)
                _save(self.out / f"step-{step:07d}.pt", weights)
            except OSError as error:
                run = "free some space and run" if out_of_space(error) else "run"
                if error.filename != str(self.last):
                    then = f"{self.last} holds step {step:,}: {run} the same command again to resume from there"
                elif self.saved_step is None:
                    then = f"step {step:,} could not be saved and the run has no checkpoint: {run} it again"
                else:
                    then = f"step {step:,} could not be saved, {self._kept()}: {run} the same command again to resume"
                raise CheckpointNotSaved(f"{error.filename}: {error.strerror}; {then}") from None
        self.saved_step = step


class _BackboneWarmup:
    """The head warm-up: for the first ``steps`` steps ``trainer.backbone`` takes no gradient and
    keeps its BatchNorm statistics; after them its parameters train as they did before (a frozen
    embedding stays frozen)."""

    def __init__(self, trainer: nn.Module, steps: int) -> None:
        self.trainer, self.steps = trainer, steps
        self.trainable = {name: p.requires_grad for name, p in trainer.backbone.named_parameters()}

    def before(self, step: int) -> None:
        """Freeze the backbone before each warm-up step, and thaw it before the first step after them."""
        if step < self.steps or step == self.steps > 0:
            frozen = step < self.steps
            for name, parameter in self.trainer.backbone.named_parameters():
                parameter.requires_grad_(self.trainable[name] and not frozen)
            self.trainer.train()
            if frozen:
                self.trainer.backbone.eval()


class RunFolderBusy(RuntimeError):
    """Another process trains in the run folder now."""


@contextlib.contextmanager
def _only_run_in(out: Path, writes: bool) -> Iterator[None]:
    """While this run writes to ``out``, no other may: the writing rank holds a lock on the folder
    itself. Two runs of one folder at once (a job started twice) both saved to ``last.pt.partial``,
    each emptying it under the other, and renamed the mixture to ``last.pt``."""
    if not writes:
        yield
        return
    folder = os.open(out, os.O_RDONLY)
    try:
        if not lock_exclusively(folder):
            raise RunFolderBusy(f"{out}: another `degrade train` is running in this folder now; one run of a folder "
                                "at a time (the same command resumes it after that one ends)")
        yield
    finally:
        os.close(folder)


def _next_batch(batches: Iterator[dict], stop: threading.Event | None) -> dict | None:
    """The epoch's next batch; None at its end, or when a decoding worker ended after ``stop`` was
    set (a SIGTERM to the whole job reaches the workers too)."""
    try:
        return next(batches, None)
    except WorkerLost:
        if stop is None or not stop.is_set():
            raise
        return None


def train(trainer: nn.Module, stream: PairStream, config: TrainConfig, device: str | torch.device = "cpu",
          stop: threading.Event | None = None, command: dict | None = None) -> list[dict]:
    """Train ``trainer`` for ``config.steps`` steps (resuming from ``config.out/last.pt`` if present).
    One run of a run folder at a time: a second one started while it trains (a job started twice)
    stops with :class:`RunFolderBusy` before it writes anything there.

    ``stop``: once set, the run ends before its next step, with a checkpoint at the last one. The
    ranks vote on it after each batch is fetched, so all end after the same step, and each sets its
    own ``stop``. A decoding worker that ended once ``stop`` is set (a SIGTERM to the whole job)
    counts as the stop, not as an error.

    ``command``: what started the run, written to ``command.json`` when the run starts afresh.

    Returns the logged rows of this call.
    """
    device = torch.device(device)
    rank, world = join_torchrun(backend_for(device))
    if stream.world_size != world:
        raise ValueError(f"the stream gives batches for {stream.world_size} rank(s), the job has {world}: make it "
                         "once the process group is initialised (degrade.distributed.join_torchrun), or give "
                         "its rank and world_size")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    with _only_run_in(out, writes=rank == 0):
        if command is not None and rank == 0 and not (out / "last.pt").exists():
            (out / "command.json").write_text(json.dumps(command, indent=2, default=str))
        return _steps(trainer, stream, config, device, stop, rank, world)


def _steps(trainer: nn.Module, stream: PairStream, config: TrainConfig, device: torch.device,
           stop: threading.Event | None, rank: int, world: int) -> list[dict]:
    """:func:`train`'s steps, once the run folder is this run's."""
    out = Path(config.out)
    torch.manual_seed(config.seed)
    trainer.to(device)
    optimizer = make_optimizer(trainer.parameters(), config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    checkpoints = _Checkpoints(out, trainer, optimizer, scheduler, scaler, config, stream.made_of(), writes=rank == 0)
    step, samples_seen = checkpoints.resume()
    model = trainer
    if world > 1:
        model = nn.parallel.DistributedDataParallel(trainer, device_ids=[device.index] if device.type == "cuda" else None)
    autocast_type = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
    per_batch = stream.batch_size * stream.world_size
    per_epoch = len(stream) * per_batch
    log = _Log(out, rank == 0)
    rows: list[dict] = []
    end = config.end_step
    bar = progress_bar(total=end, initial=step, unit="step", desc="train", disable=not config.progress or rank > 0)
    started, started_samples = time.perf_counter(), samples_seen
    trainer.train()
    warmup = _BackboneWarmup(trainer, config.frozen_backbone_steps)
    vote = _StopVote(world) if stop is not None else None
    stopping = False
    clock = DataClock(device)
    with bar:  # closed when the loop ends, also on an exception: its line ends before any message
        while step < end and not stopping:
            stream.set_epoch(samples_seen // per_epoch, start_step=(samples_seen % per_epoch) // per_batch)
            batches = iter(stream)
            while True:
                clock.fetching()
                batch = _next_batch(batches, stop)
                if vote is not None and vote.any_asked(stop.is_set()):
                    stop.set()
                    stopping = True
                    if step % config.checkpoint_every != 0:
                        checkpoints.save(step, samples_seen)
                    vote.wait_for_all()
                    break
                if batch is None:
                    break
                clock.fetched()
                warmup.before(step)
                with torch.autocast(device.type, dtype=autocast_type or torch.float32, enabled=autocast_type is not None):
                    loss, metrics = model(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)  # under fp16, skipped where the gradients overflowed (the first steps do)
                scaler.update()
                with warnings.catch_warnings():  # the schedule goes on over a skipped step, as torch.amp's examples do
                    warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"))
                    scheduler.step()
                step += 1
                samples_seen += per_batch
                bar.update(1)
                if step % config.log_every == 0 or step == end:
                    rate = (samples_seen - started_samples) / (time.perf_counter() - started)
                    row = {"step": step, "loss": loss.item(), "lr": scheduler.get_last_lr()[0], "pairs_per_s": rate,
                           "data_fraction": clock.data_fraction(),
                           **{k: float(v) for k, v in metrics.items()}}
                    rows.append(row)
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", refresh=False)
                # on every rank, so that all end at the same step if the weights went NaN
                if step % config.checkpoint_every == 0 or step == end:
                    checkpoints.save(step, samples_seen)
                elif step % config.log_every == 0:
                    checkpoints.refuse_diverged(step)
                if step >= end:
                    break
    return rows
