"""``degrade inspect``: what a built dataset holds, as text and as a grid of pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from degrade.arrow import SUMMARY, open_dataset, pairs_without_attributes, read_manifest
from degrade.built import BuiltPairs, flat_params, recipe_of
from degrade.loader import decoded_batches
from degrade.progress import progress_bar
from degrade.recipe import Recipe
from degrade.sources.table import read_json
from degrade.text import counted

BAR = 30
# Pairs a --verify batch decodes (about 0.1-0.2 s of PNG decoding on one core).
VERIFY_BATCH = 512


def histogram(values: np.ndarray) -> list[str]:
    """Text histogram: counts per value when there are few, else ten bins."""
    values = values[~np.isnan(values.astype(np.float64))] if values.dtype.kind == "f" else values
    if len(values) == 0:
        return ["    (no values)"]
    unique = np.unique(values)
    if len(unique) <= 12:
        counts = [(str(u), int((values == u).sum())) for u in unique]
    else:
        counts_, edges = np.histogram(values.astype(np.float64), bins=10)
        counts = [(f"{edges[i]:.3g}..{edges[i + 1]:.3g}", int(c)) for i, c in enumerate(counts_)]
    top = max(count for _, count in counts)
    width = max(len(label) for label, _ in counts)
    return [f"    {label:>{width}} {count:>8} {'#' * max(1, round(BAR * count / top)) if count else ''}"
            for label, count in counts]


def describe_dataset(folder: str | Path) -> str:
    """Schema, counts, recipe, skipped inputs, attribute means and param histograms of a finished build."""
    folder = Path(folder)
    dataset = open_dataset(folder)
    manifest = read_manifest(folder)
    table = dataset.data.table
    identity = table.column("identity")
    identities = pc.count_distinct(pc.filter(identity, pc.greater_equal(identity, 0))).as_py()  # -1: not known
    lines = [
        f"{folder}: {counted(len(dataset), 'pair')}, "
        f"{counted(identities, 'identity', 'identities') if identities else 'no identity labels'}, "
        f"{counted(len(list(folder.glob('data-*.arrow'))), 'shard')}, format {manifest['format']}",
        f"recipe {manifest['recipe']} (seed {manifest['seed']}) from source {manifest['source']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
        "schema:",
    ]
    lines += [f"  {field.name}: {field.type}" for field in table.schema if field.name != "attributes"]
    if "attributes" in table.column_names:
        lines += _attribute_lines(table.column("attributes"))
    summary_path = folder / SUMMARY
    if summary_path.is_file():
        summary = read_json(summary_path)
        lines.append(f"skipped inputs: {len(summary['skipped'])}")
        lines += [f"  key {key}: {reason}" for key, reason in summary["skipped"][:10]]
        if summary["fixes"]:
            lines.append("converted: " + ", ".join(f"{c} {f}" for f, c in summary["fixes"].items()))
    lines.append("params (an op's over the pairs it ran on, a one-of choice over the pairs its stage ran on):")
    params = flat_params(table)
    for name, rows in _rows_each_param_counts_on(recipe_of(folder, manifest), params).items():
        values = params[name] if rows is None else params[name][rows]
        shown = "" if len(values) == len(table) else f"  ({len(values)} of {len(table)} pairs)"
        lines.append(f"  {name}{shown}")
        lines += histogram(values)
    return "\n".join(lines)


def _attribute_lines(column: pa.ChunkedArray) -> list[str]:
    """The attributes column in a few lines: how many pairs have them and each one's mean over those."""
    names = [field.name for field in column.type]
    values = [pc.struct_field(column, n) for n in range(len(names))]
    has = len(column) - pairs_without_attributes(column)
    lines = [f"  attributes: {counted(len(names), 'column')} of {column.type[0].type}, on {has} of "
             f"{counted(len(column), 'pair')}" + (", mean over those:" if has else "")]
    for name, value in zip(names, values) if has else ():
        entry = f"{name} {pc.mean(value).as_py():.2f}"
        if lines[-1].startswith("    ") and len(lines[-1]) + len(entry) < 118:
            lines[-1] += f", {entry}"
        else:
            lines.append(f"    {entry}")
    return lines


def _rows_each_param_counts_on(recipe: Recipe, params: dict[str, np.ndarray]) -> dict[str, np.ndarray | None]:
    """For each param but the seeds: the (N,) bool rows its values mean something on (None: all).
    Every op draws its params for every sample, also those a stage's ``p`` or one-of choice skips."""
    ran = recipe.ran({name: torch.tensor(values) for name, values in params.items()
                      if name.endswith((".applied", ".choice"))})
    rows = {}
    for name in params:
        if name.endswith("seed"):
            continue
        owner, field = name.rsplit(".", 1)
        if field == "choice":
            rows[name] = params[f"{owner}.applied"]
        elif field == "applied":
            rows[name] = None
        else:
            rows[name] = ran[owner].numpy()
    return rows


def grid_rows(pairs: int, count: int) -> torch.Tensor:
    """The (min(count, pairs),) rows a grid of ``count`` pairs shows of a build of ``pairs``, spread
    evenly from its first to its last. Sources list an identity's faces together, so a build's first
    rows show few people: the demo's first 16 are 2, MS1M's (68 faces per identity) would be 1."""
    return torch.linspace(0, pairs - 1, min(count, pairs), dtype=torch.float64).round().long()


def write_dataset_grid(folder: str | Path, out: str | Path, count: int) -> None:
    """A PNG grid at ``out`` of ``count`` pairs spread over a build (:func:`grid_rows`), HQ beside LQ,
    each with the params it drew."""
    from degrade.preview import write_preview

    pairs = BuiltPairs(folder)
    write_preview(pairs.recipe, pairs.load(grid_rows(len(pairs), count)), out)


def verify_dataset(folder: str | Path, num_workers: int = 0) -> str:
    """Decode every HQ and LQ face of a finished build, ``num_workers`` processes decoding; a line
    saying all are readable, or a SourceError naming the shard and key of the first that is not.
    Opening a build checks its shards' row counts; only this finds a face damaged inside a shard."""
    pairs = BuiltPairs(folder)
    with progress_bar(total=len(pairs), unit="pair", desc="verify") as bar:
        for batch in decoded_batches(pairs, torch.arange(len(pairs)).split(VERIFY_BATCH), num_workers):
            bar.update(len(batch.key))
    return (f"verified {folder}: every HQ and LQ face of its {counted(len(pairs), 'pair')} is readable "
            f"({pairs.manifest['format']})")
