"""The engine's conversions between uint8 faces and the float images the ops work on."""

import re

import pytest
import torch

from degrade.engine import degrade_uint8, to_float, to_uint8
from degrade.recipe import load_recipe


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


def test_the_engines_pairs_are_ordinary_tensors_that_training_code_can_use():
    # The engine runs its ops in inference mode; what it returns must not be an inference tensor.
    hq = torch.randint(0, 256, (20, 3, 112, 112), dtype=torch.uint8)
    lq, params = degrade_uint8(load_recipe("mixed_no_turbulence"), hq, torch.arange(20))
    assert not lq.is_inference() and not any(value.is_inference() for value in params.values())
    weight = torch.ones(1, requires_grad=True)
    (to_float(lq) * weight).sum().backward()  # saved for backward: refused for inference tensors
    assert torch.isclose(weight.grad, to_float(lq).sum(), rtol=1e-5)
    lq.add_(1)  # in place: refused for inference tensors outside inference mode


def test_degrade_uint8_takes_keys_as_a_list_and_gives_the_recipes_own_lq():
    hq = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    recipe = load_recipe("mixed")
    lq, _ = degrade_uint8(recipe, hq, [4, 5, 6])
    assert torch.equal(lq, to_uint8(recipe(to_float(hq), torch.tensor([4, 5, 6]))[0]))


@pytest.mark.parametrize("faces, keys, says", [
    # float faces in [0, 1] were read as 0-255 values: LQ of mean 2 out of 255, without a word
    (torch.rand(2, 3, 112, 112), torch.arange(2), "expects uint8 (N, 3, H, W) faces, got (2, 3, 112, 112) torch.float32; "
                                                  "for float faces in [0, 1] call the recipe itself"),
    (torch.zeros(2, 112, 112, 3, dtype=torch.uint8), torch.arange(2),
     "expects uint8 (N, 3, H, W) faces, got (2, 112, 112, 3) torch.uint8; for (N, H, W, 3) faces pass hq.permute(0, 3, 1, 2)"),
    (torch.zeros(2, 3, 112, 112, dtype=torch.uint8), torch.arange(3),
     "expects one integer key per image, got keys of shape (3,) (torch.int64) for 2 images"),
])
def test_degrade_uint8_refuses_faces_or_keys_it_cannot_degrade(faces, keys, says):
    with pytest.raises(ValueError, match=re.escape(f"degrade_uint8 (recipe 'maug'): {says}")):
        degrade_uint8(load_recipe("maug"), faces, keys)
