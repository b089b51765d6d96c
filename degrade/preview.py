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
FONT, FONT_SCALE = cv2.FONT_HERSHEY_SIMPLEX, 0.38
MARGIN = 2  # pixels of white left of the text and between cells' text and the next cell


def text_width(text: str) -> int:
    """Pixels ``text`` takes across when drawn in the grid's font."""
    return cv2.getTextSize(text, FONT, FONT_SCALE, 1)[0][0]


def wrapped(line: str, width: int) -> list[str]:
    """``line`` broken at its spaces into lines of at most ``width`` pixels, those after the first
    indented (a word wider than that stands alone on its line). Cut short instead, a param's value
    could lose digits and show another number (``kernel_size=19`` as ``kernel_size=1``)."""
    lines: list[str] = []
    for word in line.split(" "):
        if lines and text_width(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(f"  {word}" if lines else word)
    return lines


def _display(image: torch.Tensor, side: int, size: int) -> np.ndarray:
    """(3, h, w) uint8 -> (size*ZOOM, size*ZOOM, 3) BGR, small native faces enlarged by nearest neighbour."""
    array = image[:, :side, :side].permute(1, 2, 0).numpy()[:, :, ::-1]
    return cv2.resize(np.ascontiguousarray(array), (size * ZOOM, size * ZOOM), interpolation=cv2.INTER_NEAREST)


def preview_grid(recipe: Recipe, batch: PairBatch) -> np.ndarray:
    """BGR uint8 image: one cell per pair (HQ left, LQ right, params below)."""
    size = recipe.size
    sides = recipe.native_sides(batch.params)
    labels = [[f"key {int(k)} id {int(i)}"] + describe(recipe, batch.params, n)
              for n, (k, i) in enumerate(zip(batch.key, batch.identity))]
    widest_word = max(text_width(f"  {word}") for label in labels for line in label for word in line.split(" "))
    cell_w = max(2 * size * ZOOM + 8, widest_word + 2 * MARGIN)
    lines = [[part for line in label for part in wrapped(line, cell_w - 2 * MARGIN)] for label in labels]
    text_rows = max(len(entry) for entry in lines)
    cell_h = size * ZOOM + text_rows * LINE_HEIGHT + 10
    rows = -(-len(lines) // COLUMNS)
    canvas = np.full((rows * cell_h, min(COLUMNS, len(lines)) * cell_w, 3), 255, np.uint8)
    for n, entry in enumerate(lines):
        top, left = (n // COLUMNS) * cell_h, (n % COLUMNS) * cell_w
        side = int(sides[n]) if sides is not None else size
        canvas[top:top + size * ZOOM, left:left + size * ZOOM] = _display(batch.hq[n], size, size)
        canvas[top:top + size * ZOOM, left + size * ZOOM:left + 2 * size * ZOOM] = _display(batch.lq[n], side, size)
        for k, text in enumerate(entry):
            origin = (left + MARGIN, top + size * ZOOM + 12 + k * LINE_HEIGHT)
            cv2.putText(canvas, text, origin, FONT, FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def write_preview(recipe: Recipe, batch: PairBatch, out: str | Path) -> None:
    """The grid as a PNG file at ``out`` (``degrade preview`` asks for a .png path); an OSError
    names the path if it cannot be written."""
    Path(out).write_bytes(cv2.imencode(".png", preview_grid(recipe, batch))[1].tobytes())
