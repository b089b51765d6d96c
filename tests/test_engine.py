"""The engine's conversions between uint8 faces and the float images the ops work on."""

import torch

from degrade.engine import to_float, to_uint8


def test_uint8_faces_survive_the_round_trip_through_float():
    faces = torch.arange(256, dtype=torch.uint8).repeat(2, 3, 4, 1)
    assert torch.equal(to_uint8(to_float(faces)), faces)


def test_to_uint8_clamps_and_rounds_to_nearest_with_halves_to_even():
    levels = [0.5, 1.5, 2.5, 253.5, 254.5, 254.49, 0.51, 100.0]
    expected = torch.tensor([0, 2, 2, 254, 254, 254, 1, 100, 0, 0, 255, 255], dtype=torch.uint8)
    for dtype in (torch.float32, torch.float64):
        images = torch.cat([torch.tensor(levels, dtype=dtype) / 255,
                            torch.tensor([-0.3, -1e-9, 1.0 + 1e-6, 7.0], dtype=dtype)]).view(1, 1, 3, 4)
        assert torch.equal(to_uint8(images).flatten(), expected)


def test_to_uint8_of_an_empty_batch_is_empty():
    assert to_uint8(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)


def test_to_uint8_reads_strided_batches_by_their_logical_layout():
    images = torch.rand(4, 3, 20, 24) * 1.2 - 0.1
    expected = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(to_uint8(channels_last), expected)
    assert torch.equal(to_uint8(images[:, :, 2:18, 3:21]), expected[:, :, 2:18, 3:21])
