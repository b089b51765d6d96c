"""The Triton kernels compute what the torch code they stand in for computes: checked on a CPU
by Triton's interpreter, and on a GPU where there is one."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from degrade.ops.jpeg import _colour_planes, _decoded_rgb
from degrade.ops.noise import GaussianNoise
from degrade.ops.turbulence import blend_levels

triton = pytest.importorskip("triton", reason="Triton is not installed")

from tests.interpreted_kernels import FIELD_SHAPES, SEEDS, SHARED, blend_inputs, decoding_inputs, encoding_inputs, noise_inputs, torch_normal_field  # imports Triton


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory) -> dict:
    """The kernels' outputs on CPU tensors, run by Triton's interpreter in a process of its own."""
    out = tmp_path_factory.mktemp("kernels") / "outputs.pt"
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-m", "tests.interpreted_kernels", str(out)], cwd=root, check=True,
                   env={**os.environ, "TRITON_INTERPRET": "1"})
    return torch.load(out)


@pytest.mark.parametrize("shape", FIELD_SHAPES)
def test_the_normal_field_kernel_draws_the_same_bits_as_the_torch_code(interpreted, shape):
    expected = torch_normal_field(shape, SHARED)
    assert torch.equal(interpreted[shape], expected)


def test_shared_samples_repeat_their_first_channel_and_the_others_do_not():
    field = torch_normal_field((3, 9, 7), SHARED)
    for sample, shared in enumerate(SHARED):
        repeated = torch.equal(field[sample, 1], field[sample, 0]) and torch.equal(field[sample, 2], field[sample, 0])
        assert repeated == bool(shared)
    assert torch.equal(field[~SHARED], torch_normal_field((3, 9, 7), torch.zeros_like(SHARED))[~SHARED])


def torch_noise(images: torch.Tensor, seeds: torch.Tensor, shared: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The Gaussian noise op's torch code (this process's tensors are on the CPU) with these inputs."""
    return GaussianNoise().apply(images, {"sigma": 255 * sigma, "grey": shared, "seed": seeds})


def test_the_noise_kernel_adds_the_same_field_and_clamps(interpreted):
    expected = torch_noise(*noise_inputs())
    assert torch.allclose(interpreted["noise"], expected, atol=1e-6, rtol=0)
    assert ((expected == 0) | (expected == 1)).any()  # the clamp was exercised


def test_the_encoding_kernel_gives_the_torch_codes_colour_planes(interpreted):
    (luma, chroma), (expected_luma, expected_chroma) = interpreted["colour_planes"], _colour_planes(encoding_inputs())
    assert luma.shape == (5, 1, 32, 32) and chroma.shape == (5, 2, 16, 16)
    assert torch.allclose(luma, expected_luma, atol=1e-4, rtol=0)
    assert torch.allclose(chroma, expected_chroma, atol=1e-4, rtol=0)
    assert torch.equal(luma[:, 0, 31], luma[:, 0, 26]) and torch.equal(luma[:, 0, :, 31], luma[:, 0, :, 29])  # edges replicated


def test_the_decoding_kernel_gives_the_torch_codes_8_bit_levels(interpreted):
    expected = _decoded_rgb(*decoding_inputs())
    assert interpreted["decoded"].shape == (5, 3, 27, 30)
    assert torch.equal(interpreted["decoded"], expected)
    assert torch.equal((expected[:, 0, 0, :4] * 255).round(), torch.tensor([100.0, 102, 102, 104]).expand(5, -1))  # halves to even


def test_the_blend_kernel_interpolates_the_levels_as_the_torch_code_does(interpreted):
    levels, position = blend_inputs()
    expected = blend_levels(levels, position)
    assert torch.allclose(interpreted["blend"], expected, atol=1e-6, rtol=0)
    on_whole_levels = interpreted["blend"][:, :, 0, :5]  # position k there: exactly level k
    assert torch.allclose(on_whole_levels, torch.stack([levels[k][:, :, 0, k] for k in range(5)], -1), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_the_kernels_give_the_cpu_values():
    from degrade import triton_kernels
    cuda = torch.device("cuda")
    for shape in FIELD_SHAPES:
        field = triton_kernels.normal_field(SEEDS.to(cuda), shape, SHARED.to(cuda))
        assert torch.equal(field.cpu(), torch_normal_field(shape, SHARED))
    noisy = triton_kernels.add_normal_noise(*[tensor.to(cuda) for tensor in noise_inputs()])
    assert torch.allclose(noisy.cpu(), torch_noise(*noise_inputs()), atol=1e-6, rtol=0)
    for planes, expected in zip(triton_kernels.colour_planes(encoding_inputs().to(cuda)), _colour_planes(encoding_inputs())):
        assert torch.allclose(planes.cpu(), expected, atol=1e-4, rtol=0)
    luma, chroma, height, width = decoding_inputs()
    decoded = triton_kernels.decoded_rgb(luma.to(cuda), chroma.to(cuda), height, width)
    assert ((decoded.cpu() - _decoded_rgb(luma, chroma, height, width)) * 255).abs().max() <= 1
    levels, position = blend_inputs()
    blended = triton_kernels.blend_levels([level.to(cuda) for level in levels], position.to(cuda))
    assert torch.allclose(blended.cpu(), blend_levels(levels, position), atol=1e-6, rtol=0)


def test_the_candidate_turbulence_kernels_compute_the_engines_levels_and_blend():
    # benchmarks/turbulence_levels.py times them against the engine's GEMMs on a GPU; its --check
    # compares their outputs with the engine's on CPU faces, in Triton's interpreter.
    root = Path(__file__).resolve().parents[1]
    checked = subprocess.run([sys.executable, "benchmarks/turbulence_levels.py", "--check"], cwd=root,
                             env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert float(checked.stdout.split()[-1]) < 1e-5
