"""uint8 images between the engine's (N, C, H, W) layout and the (H, W, C) of image files.

On a CPU the channels are moved by OpenCV's split and merge, one image at a time: torch's
strided copy (``permute(...).contiguous()``) of a 112x112 RGB face takes 15-23 us on one core,
``cv2.merge`` 2.5 and ``cv2.split`` 3.8. On a GPU the copy is torch's, and costs next to nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, H, W, C) uint8, contiguous, on the images' device."""
    if images.device.type != "cpu":
        return images.permute(0, 2, 3, 1).contiguous()
    n, c, h, w = images.shape
    out = np.empty((n, h, w, c), np.uint8)
    for image, target in zip(images.numpy(), out):
        cv2.merge(list(image), dst=target)
    return torch.from_numpy(out)


def stack_channels_first(images: Sequence[np.ndarray], out: torch.Tensor | None = None) -> torch.Tensor:
    """A non-empty sequence of (H, W, C) uint8 arrays of one shape -> (N, C, H, W) uint8 on the CPU,
    written into the first N rows of ``out`` (contiguous, (>= N, C, H, W) uint8) when it is given."""
    shapes = {image.shape for image in images}
    if len(shapes) > 1:  # cv2.split would leave the rows of other shapes unwritten
        raise ValueError(f"stack_channels_first: images of shapes {sorted(shapes)}; they must share one")
    h, w, c = images[0].shape
    stacked = np.empty((len(images), c, h, w), np.uint8) if out is None else out[:len(images)].numpy()
    for image, target in zip(images, stacked):
        cv2.split(image, list(target))
    return torch.from_numpy(stacked)
