"""Moving uint8 faces between the engine's channels-first layout and image files' channels-last."""

import numpy as np
import pytest
import torch

from degrade.layout import channels_last, stack_channels_first


def test_channels_last_is_the_permuted_batch_contiguous_views_included():
    images = torch.randint(0, 256, (5, 3, 16, 12), dtype=torch.uint8)
    for batch in (images, images[:, :, 2:9, 1:11], images[:0]):
        moved = channels_last(batch)
        assert moved.is_contiguous() and torch.equal(moved, batch.permute(0, 2, 3, 1))


def test_stacking_channels_first_keeps_every_pixel_in_its_channel():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 12, 3), dtype=np.uint8) for _ in range(4)]
    stacked = stack_channels_first(images)
    assert stacked.shape == (4, 3, 16, 12)
    assert torch.equal(stacked, torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))


def test_stacking_images_of_different_shapes_is_refused_rather_than_leaving_rows_unwritten():
    images = [np.zeros((16, 12, 3), np.uint8), np.zeros((12, 16, 3), np.uint8)]
    with pytest.raises(ValueError, match=r"shapes \[\(12, 16, 3\), \(16, 12, 3\)\]"):
        stack_channels_first(images)
