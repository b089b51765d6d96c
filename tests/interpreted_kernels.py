"""Run the Triton kernels on fixed CPU inputs and save their outputs: ``python -m
tests.interpreted_kernels OUT.pt``, with ``TRITON_INTERPRET=1`` (set by ``test_kernels.py``,
which compares the outputs with the torch code's). A process of its own, because Triton reads
that variable when the kernels are defined."""

import sys

import torch

from degrade import triton_kernels
from degrade.keyed import normal_field, uniform_field

SEEDS = torch.tensor([0, 1, 2 ** 32 - 1, 123456789, 2 ** 31 + 5])
SHARED = torch.tensor([True, False, True, False, False])
FIELD_SHAPES = [(3, 9, 7), (2, 5), (1,)]


def blend_inputs() -> tuple[list[torch.Tensor], torch.Tensor]:
    """Five (5, 3, 9, 7) levels in [0, 1] and (5, 1, 9, 7) positions in [0, 4], some on whole levels."""
    levels = [uniform_field(SEEDS + 1000 * k, (3, 9, 7)) for k in range(5)]
    position = 4 * uniform_field(SEEDS + 7, (1, 9, 7))
    position[:, 0, 0, :5] = torch.arange(5, dtype=torch.float32)
    return levels, position


def noise_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(5, 3, 9, 7) images in [0, 1], their seeds, which are grey, and sigmas up to 0.3."""
    return uniform_field(SEEDS + 3, (3, 9, 7)), SEEDS, SHARED, torch.linspace(0.0, 0.3, len(SEEDS))


def encoding_inputs() -> torch.Tensor:
    """(5, 3, 27, 30) images in [0, 1] (padded to 32 x 32 by the encoder), a row of them on
    halves of 8-bit levels."""
    images = uniform_field(SEEDS + 11, (3, 27, 30))
    images[:, :, 0] = (torch.arange(30) + 100.5) / 255
    return images


def decoding_inputs() -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Decoded (5, 1, 32, 32) luma in [0, 255] (a row of it on halves, with no chroma there) and
    (5, 2, 16, 16) chroma in [-100, 100], cropped to 27 x 30 pixels."""
    luma = 255 * uniform_field(SEEDS, (1, 32, 32))
    chroma = 200 * uniform_field(SEEDS + 5, (2, 16, 16)) - 100
    luma[:, :, 0] = torch.arange(32) + 100.5  # ties: rounded to even
    chroma[:, :, 0] = 0
    return luma, chroma, 27, 30


def torch_normal_field(shape: tuple[int, ...], shared: torch.Tensor) -> torch.Tensor:
    return normal_field(SEEDS, shape, shared=shared)


if __name__ == "__main__":
    outputs = {}
    for shape in FIELD_SHAPES:
        outputs[shape] = triton_kernels.normal_field(SEEDS, shape, SHARED)
    outputs["noise"] = triton_kernels.add_normal_noise(*noise_inputs())
    outputs["colour_planes"] = triton_kernels.colour_planes(encoding_inputs())
    outputs["decoded"] = triton_kernels.decoded_rgb(*decoding_inputs())
    outputs["blend"] = triton_kernels.blend_levels(*blend_inputs())
    torch.save(outputs, sys.argv[1])
