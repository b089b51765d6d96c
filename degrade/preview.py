"""A PNG grid of HQ beside LQ with each pair's key params written under it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from degrade.engine import PairBatch
from degrade.recipe import Recipe, describe

ZOOM = 2
LINE_HEIGHT = 14
COLUMNS = 4


def _display(image: torch.Tensor, side: int, size: int) -> np.ndarray:
    """(3, h, w) uint8 -> (size*ZOOM, size*ZOOM, 3) BGR, small native faces enlarged by nearest neighbour."""
    array = image[:, :side, :side].permute(1, 2, 0).numpy()[:, :, ::-1]
    return cv2.resize(np.ascontiguousarray(array), (size * ZOOM, size * ZOOM), interpolation=cv2.INTER_NEAREST)


def preview_grid(recipe: Recipe, batch: PairBatch) -> np.ndarray:
    """BGR uint8 image: one cell per pair (HQ left, LQ right, params below)."""
    size = recipe.size
    sides = recipe.native_sides(batch.params)
    lines = [[f"key {int(k)} id {int(i)}"] + describe(recipe, batch.params, n)
             for n, (k, i) in enumerate(zip(batch.key, batch.identity))]
    text_rows = max(len(entry) for entry in lines)
    cell_w, cell_h = 2 * size * ZOOM + 8, size * ZOOM + text_rows * LINE_HEIGHT + 10
    rows = -(-len(lines) // COLUMNS)
    canvas = np.full((rows * cell_h, min(COLUMNS, len(lines)) * cell_w, 3), 255, np.uint8)
    for n, entry in enumerate(lines):
        top, left = (n // COLUMNS) * cell_h, (n % COLUMNS) * cell_w
        side = int(sides[n]) if sides is not None else size
        canvas[top:top + size * ZOOM, left:left + size * ZOOM] = _display(batch.hq[n], size, size)
        canvas[top:top + size * ZOOM, left + size * ZOOM:left + 2 * size * ZOOM] = _display(batch.lq[n], side, size)
        for k, text in enumerate(entry):
            origin = (left + 2, top + size * ZOOM + 12 + k * LINE_HEIGHT)
            cv2.putText(canvas, text[:64], origin, cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_preview(recipe: Recipe, batch: PairBatch, out: str | Path) -> None:
    """The grid as a PNG file at ``out`` (``degrade preview`` asks for a .png path); an OSError
    names the path if it cannot be written."""
    Path(out).write_bytes(cv2.imencode(".png", preview_grid(recipe, batch))[1].tobytes())
