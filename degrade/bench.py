"""``degrade bench``: the engine against a plain per-image OpenCV loop, in one run.

Both make the same pairs from the same HQ faces with the same params (the engine's keyed
draws). The OpenCV loop runs in a pool of processes, one per core by default; so does the engine
on a CPU, as builds and streams run it there (in their decoding workers). Absolute rates
on shared machines are noisy; the ratio is the number to compare. The two are timed in turn,
round after round, and each side's best round is reported: on a shared machine a neighbour's
load slows whichever side runs at that moment, so one round of each can be off by 20 % or more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import resource
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch

from degrade.arrow import encode_png
from degrade.engine import chunks, degrade_uint8, prepare_cpu_worker, to_float
from degrade.layout import channels_last
from degrade.machine import usable_cores
from degrade.recipe import Recipe, leaf_params, load_recipe
from degrade.sources import Faces, Source, SourceError
from degrade.text import counted, every
from degrade.workers import leave_stop_signals_to_parent

# Pairs per task of the OpenCV loop, whose params are drawn for a task at once, as the engine's are for
# a batch: the keyed draws take about 70 tensor ops a call, 27 us per pair of `mixed_no_turbulence` in
# tasks of 32 and 4.5 in tasks of 256 (the engine's batch; one thread of the 2-core machine).
CHUNK = 256


@dataclasses.dataclass
class BenchResult:
    recipe: str
    size: int  # the faces' side in pixels
    device: str
    pairs: int
    batch_size: int
    workers: int
    engine_rates: list[float]  # one per round
    opencv_rates: list[float]
    stage_rates: dict[str, float]  # the engine's, each stage alone
    opencv_stage_rates: dict[str, float]  # the OpenCV loop's, one process, the same stages
    peak_memory_mib: float  # on a CPU the largest engine process's RSS, on a GPU the engine's allocations

    @property
    def engine_rate(self) -> float:
        return max(self.engine_rates)

    @property
    def opencv_rate(self) -> float:
        return max(self.opencv_rates)

    @property
    def ratio(self) -> float:
        """Best round against best round."""
        return self.engine_rate / self.opencv_rate

    def report(self) -> str:
        on_cpu = self.device == "cpu"
        rounds = len(self.engine_rates)
        each_round = ", ".join(f"{e / o:.2f}x" for e, o in zip(self.engine_rates, self.opencv_rates))
        processes = counted(self.workers, "process", "processes")
        lines = [
            f"recipe {self.recipe}, {counted(self.pairs, 'pair')} of {self.size}x{self.size}, engine on {self.device} "
            f"(batch {self.batch_size}), best of {counted(rounds, 'round')} each",
            f"  {'engine, ' + processes if on_cpu else 'engine':<28}{self.engine_rate:12,.0f} pairs/s",
            f"  {'OpenCV loop, ' + processes:<28}{self.opencv_rate:12,.0f} pairs/s",
            f"  ratio engine / OpenCV       {self.ratio:12.2f}x   (round by round: {each_round})",
            f"  per process of OpenCV       {self.opencv_rate / self.workers:12,.0f} pairs/s",
        ]
        width = max(map(len, self.stage_rates))
        lines += ["  stages alone, on every sample of a batch (pairs/s):",
                  f"    {'':<{width}} {'engine' + (', 1 thread' if on_cpu else ''):>16} {'OpenCV, 1 process':>18}"]
        lines += [f"    {name:<{width}} {rate:16,.0f} {self.opencv_stage_rates[name]:18,.0f}"
                  for name, rate in self.stage_rates.items()]
        lines.append(("  peak RSS of an engine process" if on_cpu else "  peak GPU memory of the engine")
                     + f"{self.peak_memory_mib:10,.0f} MiB")
        return "\n".join(lines)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_engine(recipe: Recipe, hq: torch.Tensor, pairs: int, device: torch.device) -> float:
    """The engine in this process on ``device``, batches of ``len(hq)`` pairs."""
    batch = len(hq)
    degrade_uint8(recipe, hq, torch.arange(batch, device=device))  # warm-up
    _synchronise(device)
    started = time.perf_counter()
    for first in range(0, pairs, batch):
        degrade_uint8(recipe, hq, torch.arange(first, first + batch, device=device))
    _synchronise(device)
    return (pairs // batch * batch) / (time.perf_counter() - started)


_worker_state: dict = {}


def _init_engine_worker(recipe_source: str, hq: torch.Tensor) -> None:
    prepare_cpu_worker()
    leave_stop_signals_to_parent()
    _worker_state.update(recipe=load_recipe(recipe_source), hq=hq)


def _engine_batch(first: int) -> int:
    recipe, hq = _worker_state["recipe"], _worker_state["hq"]
    degrade_uint8(recipe, hq, torch.arange(first, first + len(hq)))
    return len(hq)


def _pool_rate(workers: int, initializer, initargs: tuple, task, tasks: list) -> float:
    """Items per second of ``task`` over ``tasks`` (each returns its item count) in a pool of
    ``workers`` forked processes, after one warm-up task per process."""
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=initializer, initargs=initargs) as processes:
        processes.map(task, tasks[:workers], chunksize=1)
        started = time.perf_counter()
        done = sum(processes.map(task, tasks, chunksize=1))
        return done / (time.perf_counter() - started)


def _time_engine_processes(recipe_source: str, hq: torch.Tensor, pairs: int, workers: int) -> float:
    """The CPU engine as builds and streams run it: ``workers`` processes of one torch thread,
    each degrading whole batches of ``len(hq)`` pairs."""
    firsts = list(range(0, pairs - len(hq) + 1, len(hq)))
    return _pool_rate(workers, _init_engine_worker, (recipe_source, hq), _engine_batch, firsts)


@torch.inference_mode()
def _time_stages(recipe: Recipe, hq: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Each op alone on every sample of the batch, in the engine's CPU chunks on a CPU (one thread),
    in inference mode as the engine runs them."""
    images = to_float(hq)
    params = recipe.sample(torch.arange(len(hq), device=device))
    rates = {}
    for leaf in recipe.leaves:
        own = leaf_params(params, leaf)

        def run() -> None:
            for rows in chunks(len(hq), device):
                leaf.op.apply(images[rows], {k: v[rows] for k, v in own.items()})

        run()
        _synchronise(device)
        started = time.perf_counter()
        run()
        _synchronise(device)
        rates[f"{leaf.path} ({leaf.op.name})"] = len(hq) / (time.perf_counter() - started)
    return rates


@contextlib.contextmanager
def _one_opencv_thread() -> Iterator[None]:
    """OpenCV on one thread in this process and the processes it forks meanwhile, as the engine's
    processes run torch: by default OpenCV spreads a blur or a resize over every core (its
    `mixed_no_turbulence` loop in one process: 346 us per pair on the 2-core machine's two threads,
    366 on one). Set before forking: a forked child that resizes the thread pool it inherited in
    use can wait forever for the parent's threads."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(threads)


def _time_opencv_stages(recipe: Recipe, pool: np.ndarray) -> dict[str, float]:
    """Each op's OpenCV twin alone on every face of ``pool`` ((N, H, W, 3) uint8), in this process on
    one OpenCV thread, with the params the engine's stages get in :func:`_time_stages`; keyed as there."""
    from degrade.opencv_reference import apply_leaf, sample_params

    params = recipe.sample(torch.arange(len(pool)))
    rates = {}
    with _one_opencv_thread():
        for leaf in recipe.leaves:
            per_face = sample_params(params, leaf)
            started = time.perf_counter()
            for image, face_params in zip(pool, per_face):
                apply_leaf(leaf, image, face_params)
            rates[f"{leaf.path} ({leaf.op.name})"] = len(pool) / (time.perf_counter() - started)
    return rates


def _init_worker(recipe_text_source: str, pool: np.ndarray) -> None:
    leave_stop_signals_to_parent()
    torch.set_num_threads(1)
    _worker_state["recipe"] = load_recipe(recipe_text_source)
    _worker_state["pool"] = pool


def _opencv_chunk(bounds: tuple[int, int]) -> int:
    from degrade.opencv_reference import degrade_one, replay_plan

    recipe, pool = _worker_state["recipe"], _worker_state["pool"]
    start, stop = bounds
    plan = replay_plan(recipe, recipe.sample(torch.arange(start, stop)))
    for key, ops in zip(range(start, stop), plan):
        degrade_one(pool[key % len(pool)], ops)
    return stop - start


def _time_opencv(recipe_source: str, pool: np.ndarray, pairs: int, workers: int) -> float:
    bounds = [(first, min(first + CHUNK, pairs)) for first in range(0, pairs, CHUNK)]
    with _one_opencv_thread():
        return _pool_rate(workers, _init_worker, (recipe_source, pool), _opencv_chunk, bounds)


def _opencv_build_chunk(bounds: tuple[int, int]) -> list[tuple[int, int, bytes, bytes]]:
    """Decode, degrade and encode one chunk per image, as a plain CPU data pipeline would."""
    from degrade.opencv_reference import degrade_one, replay_plan

    recipe, source, image_format = (_worker_state[k] for k in ("recipe", "source", "format"))
    keys = torch.arange(*bounds)
    faces = source.load(keys)
    plan = replay_plan(recipe, recipe.sample(faces.key))

    def encode(image: np.ndarray) -> bytes:  # as the build encodes: the same PNG options and channel swap
        return encode_png(torch.from_numpy(image)) if image_format == "png" else image.tobytes()

    rows = []
    # (H, W, 3) faces, as OpenCV decodes them, out of the source's batch the fast way.
    for key, identity, hq, ops in zip(faces.key.tolist(), faces.identity.tolist(), channels_last(faces.hq).numpy(),
                                      plan):
        lq = degrade_one(hq, ops)
        rows.append((key, identity, encode(hq), encode(lq)))
    return rows


def _init_build_worker(recipe_source: str, source_spec: str, image_format: str) -> None:
    from degrade.sources import open_source

    leave_stop_signals_to_parent()
    torch.set_num_threads(1)
    recipe = load_recipe(recipe_source)
    with warnings.catch_warnings():  # what the source leaves out: said once, by the process that started this one
        warnings.simplefilter("ignore")
        source = open_source(source_spec, recipe.size)
    _worker_state.update(recipe=recipe, format=image_format, source=source)


def _time_opencv_build(recipe_source: str, source_spec: str, image_format: str, pairs: int, workers: int,
                       out: Path) -> float:
    """Pairs/s of the OpenCV pipeline, its chunks' rows written as they come (as a build writes)."""
    context = multiprocessing.get_context("fork")
    schema = pa.schema([("key", pa.int64()), ("identity", pa.int64()), ("hq", pa.binary()), ("lq", pa.binary())])
    written = 0
    started = time.perf_counter()
    with (context.Pool(workers, initializer=_init_build_worker, initargs=(recipe_source, source_spec, image_format))
          as pool, pa.OSFile(str(out), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer):
        chunks = [(first, min(first + CHUNK, pairs)) for first in range(0, pairs, CHUNK)]
        for rows in filter(None, pool.imap(_opencv_build_chunk, chunks)):
            columns = [pa.array(column, field.type) for column, field in zip(zip(*rows), schema)]
            writer.write_batch(pa.record_batch(columns, schema=schema))
            written += len(rows)
    return written / (time.perf_counter() - started)


def _first_faces(source: Source, count: int) -> Faces:
    """The readable ones of ``source``'s first ``count`` faces; a SourceError naming one when none is."""
    faces = source.load(torch.arange(min(count, len(source))))
    if len(faces.key) == 0:
        key, reason = faces.skipped[0]
        raise SourceError(f"{source.name}: {every(len(faces.skipped), 'face')} to time was skipped (key {key}: "
                          f"{reason})")
    return faces


def run_build_bench(recipe_source: str, source_spec: str, device: str = "cpu", batch_size: int = 256,
                    pairs: int = 2048, workers: int | None = None) -> str:
    """``degrade build`` end to end (PNG and raw) against an OpenCV loop that decodes, degrades,
    encodes and writes the same pairs; returns the report. The engine is warmed up first (device
    start-up, kernel and FFT-plan caches); decoding workers start inside the timing, as in a build."""
    from degrade.arrow import build_dataset
    from degrade.sources import open_source

    workers = workers or usable_cores()
    recipe = load_recipe(recipe_source)
    source = open_source(source_spec, recipe.size)
    pairs = min(pairs, len(source))
    lines = [f"degrade build, recipe {recipe.name}, {counted(pairs, 'pair')} from {source_spec}, engine on {device}, "
             f"{counted(workers, 'decoding worker')}, {counted(workers, 'OpenCV process', 'OpenCV processes')}"]
    _first_faces(source, batch_size)
    with tempfile.TemporaryDirectory() as scratch:
        build_dataset(recipe, source, Path(scratch) / "warm-up", limit=min(batch_size, pairs), batch_size=batch_size,
                      device=device, image_format="raw", progress=False)  # device start-up stays out of the timing
        for image_format in ("raw", "png"):
            started = time.perf_counter()
            build_dataset(recipe, source, Path(scratch) / image_format, limit=pairs, batch_size=batch_size,
                          device=device, num_workers=workers, image_format=image_format, progress=False)
            engine = pairs / (time.perf_counter() - started)
            opencv = _time_opencv_build(recipe_source, source_spec, image_format, pairs, workers,
                                        Path(scratch) / f"opencv-{image_format}.arrow")
            lines.append(f"  {image_format:<4} engine {engine:10,.0f} pairs/s   OpenCV loop {opencv:10,.0f} pairs/s   "
                         f"ratio {engine / opencv:6.2f}x")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"  peak RSS of this process {peak:,.0f} MiB")
    return "\n".join(lines)


def run_train_bench(recipe_source: str, source: Source, backbone: str, device: str = "cpu", batch_size: int = 256,
                    pairs: int = 2048, workers: int | None = None, precision: str | None = None) -> str:
    """The streaming iterator feeding training steps: ``backbone`` with an ArcFace head on the HQ and
    LQ views (the LRFR trainer without contrast loss), pairs made on the fly from ``source``.

    Reports the step rate and the share of step time spent making batches (decoding workers,
    host-to-device copy, the engine), measured after a warm-up third of the steps. ``precision``:
    the steps' autocast, by default bf16 on a GPU and fp32 on a CPU (where a CPU without bf16
    units runs bf16 slower: a MobileFaceNet step of 64 faces on the 2-core machine took 14 s
    against 3.2 in fp32).
    """
    precision = precision or ("bf16" if torch.device(device).type == "cuda" else "fp32")
    from degrade.stream import PairStream
    from trainers.backbones import build_backbone
    from trainers.loop import TrainConfig, train
    from trainers.registry import build_trainer

    recipe = load_recipe(recipe_source)
    workers = workers or usable_cores()
    steps = max(3, pairs // batch_size)
    stream = PairStream.from_source(recipe, source, batch_size=batch_size, device=device, num_workers=workers)
    spec = {"trainer": "lrfr", "use_lq": True, "contrast_weight": 0.0, "p": 2.0, "teacher": False,
            "backbone": backbone, "head": "arcface", "classes": int(source.identities.max()) + 1}
    trainer = build_trainer(spec, build_backbone(backbone, None))
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainConfig(out=Path(scratch), steps=steps, precision=precision, log_every=steps // 3,
                             checkpoint_every=steps + 1)
        rows = train(trainer, stream, config, device)
    warm, last = rows[0], rows[-1]
    seconds = lambda row: row["step"] * batch_size / row["pairs_per_s"]  # noqa: E731  (since the run started)
    rate = (last["step"] - warm["step"]) * batch_size / (seconds(last) - seconds(warm))
    return "\n".join([
        f"training {backbone} ({precision}, batch {batch_size}) on pairs streamed from {source.name} with recipe "
        f"{recipe.name}, {counted(workers, 'decoding worker')}, engine on {device}",
        f"  steps timed                 {last['step'] - warm['step']:12d} "
        f"(after {counted(warm['step'], 'warm-up step')})",
        f"  training                    {rate:12,.0f} pairs/s (whole run with warm-up {last['pairs_per_s']:,.0f})",
        f"  waiting for data            {100 * last['data_fraction']:11.2f} % of step time",
    ])


def run_bench(recipe_source: str, source: Source, device: str = "cpu", batch_size: int = 256, pairs: int = 2048,
              workers: int | None = None, rounds: int = 3) -> BenchResult:
    """Measure the engine and the OpenCV loop on ``pairs`` pairs of ``source``'s first ``batch_size`` faces,
    in turn, ``rounds`` times each."""
    recipe = load_recipe(recipe_source)
    workers = workers or usable_cores()
    hq_cpu = _first_faces(source, batch_size).hq
    if len(hq_cpu) < batch_size:
        hq_cpu = hq_cpu[torch.arange(batch_size) % len(hq_cpu)]
    target = torch.device(device)
    if target.type == "cuda":
        torch.cuda.reset_peak_memory_stats(target)
    hq = hq_cpu.to(target)
    on_cpu = target.type == "cpu"
    pool = channels_last(hq_cpu).numpy()
    engine_rates, opencv_rates, peak = [], [], 0.0
    for _ in range(rounds):
        if on_cpu:
            engine_rates.append(_time_engine_processes(recipe_source, hq, max(pairs, batch_size), workers))
            if len(engine_rates) == 1:  # the largest child so far: an engine process (no OpenCV one has run)
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        else:
            engine_rates.append(_time_engine(recipe, hq, max(pairs, batch_size), target))
        opencv_rates.append(_time_opencv(recipe_source, pool, pairs, workers))
    threads = torch.get_num_threads()
    if on_cpu:
        prepare_cpu_worker()  # per core and with the workers' malloc settings, as the engine's workers run
    stage_rates = _time_stages(recipe, hq, target)
    torch.set_num_threads(threads)
    opencv_stage_rates = _time_opencv_stages(recipe, pool)
    if target.type == "cuda":
        peak = torch.cuda.max_memory_allocated(target) / 2 ** 20
    return BenchResult(recipe=recipe.name, size=recipe.size, device=str(target), pairs=pairs, batch_size=batch_size,
                       workers=workers, engine_rates=engine_rates, opencv_rates=opencv_rates, stage_rates=stage_rates,
                       opencv_stage_rates=opencv_stage_rates, peak_memory_mib=peak)
