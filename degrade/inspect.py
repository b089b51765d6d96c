"""``degrade inspect``: what a built dataset holds, as text and as a grid of pairs."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import torch
import yaml

from degrade.arrow import SUMMARY, open_dataset, read_manifest
from degrade.engine import PairBatch
from degrade.recipe import Recipe, parse_recipe

BAR = 30


def _flat(table: pa.Table) -> pa.Table:
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    return table


def flat_params(table: pa.Table) -> dict[str, np.ndarray]:
    """The params column as {'stage.field': (N,) array}."""
    params = _flat(table.select(["params"]))
    return {name[len("params."):]: params.column(name).to_numpy(zero_copy_only=False) for name in params.column_names}


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
    """Schema, counts, recipe, skipped inputs and param histograms of a finished build."""
    folder = Path(folder)
    dataset = open_dataset(folder)
    manifest = read_manifest(folder)
    table = dataset.data.table
    lines = [
        f"{folder}: {len(dataset)} pairs, {len(set(dataset['identity']))} identities, "
        f"{len(list(folder.glob('data-*.arrow')))} shards, format {manifest['format']}",
        f"recipe {manifest['recipe']} (seed {manifest['seed']}) from source {manifest['source']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in manifest["versions"].items()),
        "schema:",
    ]
    lines += [f"  {field.name}: {field.type}" for field in table.schema]
    summary_path = folder / SUMMARY
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        lines.append(f"skipped inputs: {len(summary['skipped'])}")
        lines += [f"  key {key}: {reason}" for key, reason in summary["skipped"][:10]]
        if summary["fixes"]:
            lines.append("converted: " + ", ".join(f"{c} {f}" for f, c in summary["fixes"].items()))
    lines.append("params:")
    for name, values in flat_params(table).items():
        if name.endswith("seed"):
            continue
        lines.append(f"  {name}")
        lines += histogram(values)
    return "\n".join(lines)


def _decode(value, image_format: str, side: int) -> torch.Tensor:
    if image_format == "png":
        image = cv2.imdecode(np.frombuffer(value["bytes"], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    else:
        image = np.frombuffer(value, np.uint8).reshape(side, side, 3)
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)


def load_pairs(folder: str | Path, rows: slice) -> tuple[Recipe, PairBatch]:
    """Rows of a build as a CPU :class:`PairBatch` (small native LQ placed in a zero canvas), with its recipe."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    recipe = parse_recipe(yaml.safe_load(manifest["recipe_text"]), source=manifest["recipe"])
    table = open_dataset(folder).data.table.slice(rows.start or 0, (rows.stop or 0) - (rows.start or 0))
    params = {k: torch.from_numpy(np.array(v)) for k, v in flat_params(table).items()}
    sides = params.get("resize.side") if recipe.output_size != recipe.size else None
    canvas = recipe.output_size
    hq = torch.stack([_decode(v, manifest["format"], recipe.size) for v in table.column("hq").to_pylist()])
    lq = torch.zeros(len(hq), 3, canvas, canvas, dtype=torch.uint8)
    for n, value in enumerate(table.column("lq").to_pylist()):
        side = int(sides[n]) if sides is not None else canvas
        lq[n, :, :side, :side] = _decode(value, manifest["format"], side)
    batch = PairBatch(key=torch.from_numpy(table.column("key").to_numpy()),
                      identity=torch.from_numpy(table.column("identity").to_numpy()), hq=hq, lq=lq, params=params)
    return recipe, batch


def write_dataset_grid(folder: str | Path, out: str | Path, count: int) -> None:
    from degrade.preview import write_preview

    recipe, batch = load_pairs(folder, slice(0, count))
    write_preview(recipe, batch, out)
