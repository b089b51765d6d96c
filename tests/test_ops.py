"""Each op: recorded params replay it exactly, samples are independent, the effect is the one claimed."""

import math

import cv2
import numpy as np
import pytest
import torch

from degrade.ops import OP_NAMES, ConfigError, op_class
from degrade.ops.blur import AnisotropicBlur, DefocusBlur, GaussianBlur, MotionBlur
from degrade.ops.fields import fft_size, filtered_field
from degrade.ops.geometry import Elastic, gaussian_power
from degrade.ops.illumination import Illumination
from degrade.ops.jpeg import Jpeg, jpeg_round_trip
from degrade.ops.noise import GaussianNoise, PoissonNoise
from degrade.ops.occlusion import CropPad, RectangleErase
from degrade.ops.resize import Resize
from degrade.ops.turbulence import MAX_BLUR_SIGMA, Turbulence, aperture_averaged_gradient_power, tilt_variance


def make(name):
    return op_class(name)(sides=[7, 14, 20], weights=[1, 1, 2]) if name == "resize" else op_class(name)()


def to_numpy_uint8(images: torch.Tensor) -> np.ndarray:
    return (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("name", OP_NAMES)
def test_recorded_params_replay_the_output_exactly(name, faces):
    op = make(name)
    keys = torch.arange(100, 112)
    out, params = op(faces[:12], keys, seed=3)
    assert torch.equal(op.apply(faces[:12], params), out)
    assert all(len(v) == 12 for v in params.values())
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("name", OP_NAMES)
def test_an_op_called_on_0_255_values_or_uint8_faces_refuses_them_naming_itself(name, faces):
    with pytest.raises(ValueError, match=f"op '{make(name).name}': expects images in \\[0, 1\\], got values in .*divide"):
        make(name)(faces[:2] * 255, torch.arange(2))
    with pytest.raises(ValueError, match=f"op '{make(name).name}': expects float .* torch.uint8; for uint8 faces"):
        make(name)((faces[:2] * 255).to(torch.uint8), [0, 1])


@pytest.mark.parametrize("name", OP_NAMES)
def test_a_sample_is_degraded_the_same_alone_or_in_a_batch(name, faces):
    op = make(name)
    keys = torch.arange(40, 48)
    batch, _ = op(faces[:8], keys, seed=1)
    alone = torch.cat([op(faces[i:i + 1], keys[i:i + 1], seed=1)[0] for i in range(8)])
    assert torch.equal(alone, batch)


def test_samples_in_one_batch_get_different_params():
    params = GaussianBlur(sigma=[0.5, 3.0]).sample(torch.arange(64))
    assert len(params["sigma"].unique()) == 64
    assert len(params["kernel_size"].unique()) > 4


# ---- resize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [7, 14, 20, 56])
def test_maug_resize_matches_opencv_area_down_and_bicubic_up(side, faces):
    out = Resize(sides=[side]).apply(faces[:8], {"side": torch.full((8,), side)})
    reference = np.stack([
        cv2.resize(cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA), (112, 112),
                   interpolation=cv2.INTER_CUBIC)
        for image in to_numpy_uint8(faces[:8])
    ])
    difference = np.abs(to_numpy_uint8(out).astype(int) - reference)
    assert difference.mean() < 0.5 and difference.max() <= 3  # OpenCV rounds its small image to 8 bits


def _energy_above(images: torch.Tensor, cycles: float) -> float:
    """Fraction of non-DC spectral energy above ``cycles`` per image width (either axis)."""
    spectrum = torch.fft.fft2(images - images.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    frequency = torch.fft.fftfreq(images.shape[-1]) * images.shape[-1]
    high = (frequency.abs()[:, None] > cycles) | (frequency.abs()[None, :] > cycles)
    return (spectrum[..., high].sum() / spectrum.sum()).item()


def test_a_7px_maug_face_keeps_little_energy_above_the_7px_nyquist_band(faces):
    """What remains above 3.5 cycles is bicubic's reconstruction of the band (its spectral
    replicas), the same amount OpenCV's area-down / bicubic-up pipeline leaves."""
    out = Resize(sides=[7]).apply(faces, {"side": torch.full((64,), 7)})
    reference = torch.from_numpy(np.stack([
        cv2.resize(cv2.resize(image, (7, 7), interpolation=cv2.INTER_AREA), (112, 112), interpolation=cv2.INTER_CUBIC)
        for image in to_numpy_uint8(faces)
    ])).permute(0, 3, 1, 2).float() / 255
    assert _energy_above(faces, 3.5) > 0.2
    assert _energy_above(out, 3.5) < 0.12
    assert abs(_energy_above(out, 3.5) - _energy_above(reference, 3.5)) < 0.01
    assert _energy_above(out, 7) < 0.4 * _energy_above(faces, 7)


def test_native_output_is_the_small_face_in_a_zero_canvas(faces):
    op = Resize(sides=[7, 28], output="native")
    out = op.apply(faces[:2], {"side": torch.tensor([7, 28])})
    assert out.shape == (2, 3, 28, 28)
    assert out[0, :, 7:, :].abs().sum() == 0 and out[0, :, :, 7:].abs().sum() == 0
    area = cv2.resize(to_numpy_uint8(faces[:1])[0], (7, 7), interpolation=cv2.INTER_AREA)
    assert np.abs(to_numpy_uint8(out[:1, :, :7, :7])[0].astype(int) - area).max() <= 1


def test_continuous_scale_draws_every_side_in_its_range():
    op = Resize(scale=[0.1, 0.5])
    sides = op.sample(torch.arange(5000))["side"]
    assert sides.min() == round(0.1 * 112) and sides.max() == round(0.5 * 112)
    assert len(sides.unique()) == round(0.5 * 112) - round(0.1 * 112) + 1


def test_maug_weights_1_1_2_give_the_paper_ratio():
    sides = Resize(sides=[7, 14, 20], weights=[1, 1, 2]).sample(torch.arange(20000))["side"]
    fractions = torch.tensor([(sides == s).float().mean() for s in (7, 14, 20)])
    assert torch.allclose(fractions, torch.tensor([0.25, 0.25, 0.5]), atol=0.01)


# ---- blur -----------------------------------------------------------------------------------


def test_gaussian_kernel_is_opencvs_gaussian():
    op = GaussianBlur(sigma=[1.5, 1.5], kernel_size=[9, 9])
    kernel = op.kernels({"sigma": torch.tensor([1.5]), "kernel_size": torch.tensor([9])}, "cpu", torch.float64)[0]
    one_d = cv2.getGaussianKernel(9, 1.5)
    assert np.allclose(kernel.numpy(), one_d @ one_d.T, atol=1e-9)


def test_each_sample_uses_its_own_kernel_size():
    op = GaussianBlur(sigma=[5.0, 5.0], kernel_size=[3, 15])
    kernels = op.kernels({"sigma": torch.tensor([5.0, 5.0]), "kernel_size": torch.tensor([3, 15])}, "cpu", torch.float64)
    assert (kernels[0] > 0).sum() == 9 and (kernels[1] > 0).sum() == 225
    assert torch.allclose(kernels.sum(dim=(1, 2)), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("side, kernel", [(112, 7), (14, 13), (8, 31)], ids=["face", "small", "wider-than-the-face"])
def test_gaussian_axis_matrix_filters_like_apply_borders_included(side, kernel, faces):
    op = GaussianBlur(sigma=[0.5, 4.0], kernel_size=[3, kernel])
    images = faces[:8, :, :side, :side]
    params = op.sample(torch.arange(8))
    matrix = op.axis_matrix(params, side, images.device, images.dtype)
    assert torch.allclose(matrix.sum(dim=-1), torch.ones(()), atol=1e-6)
    assert torch.allclose(op.apply_by_matrices(images, params), op.apply(images, params), atol=1e-6)  # GPU path


@pytest.mark.parametrize("side, kernel", [(112, 7), (14, 13), (5, 13)], ids=["face", "small", "reflected-twice"])
def test_folding_a_gaussian_into_matrices_multiplies_them_by_its_axis_matrix(side, kernel):
    op = GaussianBlur(sigma=[0.5, 4.0], kernel_size=[3, kernel])
    params = op.sample(torch.arange(6))
    matrices = torch.rand(6, 4, side, dtype=torch.float64)
    expected = matrices @ op.axis_matrix(params, side, matrices.device, matrices.dtype)
    assert torch.allclose(op.fold_into(matrices, params), expected, atol=1e-12)


@pytest.mark.parametrize("op", [MotionBlur(kernel_size=[31, 31], length=[20, 30]), DefocusBlur(kernel_size=[41, 41])],
                         ids=["motion", "defocus"])
def test_a_kernel_wider_than_the_face_sees_it_reflected_as_often_as_it_reaches(op, faces):
    """Torch's reflect padding refused a reach of the image's side or more (a traceback, for recipes of small faces)."""
    images = faces[:4, :, :12, :12].to(torch.float64)
    params = op.sample(torch.arange(4))
    kernels = op.kernels(params, images.device, images.dtype)
    reach = kernels.shape[-1] // 2
    padded = torch.from_numpy(np.pad(images.numpy(), [(0, 0), (0, 0), (reach, reach), (reach, reach)], mode="reflect"))
    expected = torch.stack([torch.nn.functional.conv2d(padded[i:i + 1].transpose(0, 1), kernels[i, None, None])
                            .transpose(0, 1)[0] for i in range(4)])
    assert torch.allclose(op.apply(images, params), expected.clamp(0, 1), atol=1e-12)


def test_motion_kernel_spreads_along_its_angle_only():
    op = MotionBlur(length=[9.0, 9.0], kernel_size=[15, 15])
    kernel = op.kernels({"length": torch.tensor([9.0, 9.0]), "angle": torch.tensor([0.0, 90.0]),
                         "kernel_size": torch.tensor([15, 15])}, "cpu", torch.float64)
    offsets = torch.arange(15, dtype=torch.float64) - 7
    spread_x = (kernel.sum(dim=1) * offsets ** 2).sum(dim=1)
    spread_y = (kernel.sum(dim=2) * offsets ** 2).sum(dim=1)
    assert spread_x[0] > 5 and spread_y[0] < 0.1   # horizontal streak, length 9: variance ~ 9^2/12
    assert spread_y[1] > 5 and spread_x[1] < 0.1   # vertical streak


def test_anisotropic_kernel_has_its_two_sigmas():
    op = AnisotropicBlur(sigma_x=[3.0, 3.0], sigma_y=[1.0, 1.0], kernel_size=[31, 31])
    kernel = op.kernels({"sigma_x": torch.tensor([3.0]), "sigma_y": torch.tensor([1.0]), "angle": torch.tensor([0.0]),
                         "kernel_size": torch.tensor([31])}, "cpu", torch.float64)[0]
    offsets = torch.arange(31, dtype=torch.float64) - 15
    assert abs((kernel.sum(0) * offsets ** 2).sum().sqrt().item() - 3.0) < 0.01
    assert abs((kernel.sum(1) * offsets ** 2).sum().sqrt().item() - 1.0) < 0.01


def test_defocus_kernel_is_a_flat_disk_of_its_radius():
    op = DefocusBlur(radius=[3.0, 3.0], kernel_size=[11, 11])
    kernel = op.kernels({"radius": torch.tensor([3.0]), "kernel_size": torch.tensor([11])}, "cpu", torch.float64)[0]
    support = (kernel > 0).sum().item()
    assert abs(support - math.pi * 3.5 ** 2) < 8
    assert kernel[5, 5] == kernel[5, 6] == kernel[4, 5]


def _gradient_energy(images: torch.Tensor) -> float:
    return ((images[..., 1:, :] - images[..., :-1, :]) ** 2).mean().item()


@pytest.mark.parametrize("op", [
    GaussianBlur(sigma=[1.5, 3.0]),
    AnisotropicBlur(sigma_x=[1.5, 3.0], sigma_y=[1.5, 3.0]),
    MotionBlur(length=[7.0, 15.0], kernel_size=[15, 21]),
    DefocusBlur(radius=[2.0, 4.0], kernel_size=[9, 11]),
], ids=lambda op: op.name)
def test_blur_removes_fine_detail_and_keeps_mean_brightness(op, faces):
    out, _ = op(faces[:16], torch.arange(16))
    assert _gradient_energy(out) < 0.5 * _gradient_energy(faces[:16])
    assert abs(out.mean().item() - faces[:16].mean().item()) < 0.01


# ---- noise ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma", [2.0, 10.0, 25.0])
def test_gaussian_noise_has_its_sigma_on_a_flat_image(sigma, flat_grey):
    out, _ = GaussianNoise(sigma=[sigma, sigma], grey=0.0)(flat_grey, torch.arange(8))
    measured = (out - 0.5).std().item() * 255
    assert abs(measured - sigma) < 0.05 * sigma


def test_grey_noise_is_the_same_in_every_channel_and_colour_noise_is_not(flat_grey):
    grey, _ = GaussianNoise(sigma=[10, 10], grey=1.0)(flat_grey, torch.arange(8))
    colour, _ = GaussianNoise(sigma=[10, 10], grey=0.0)(flat_grey, torch.arange(8))
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])
    correlation = torch.corrcoef(torch.stack([colour[:, 0].flatten(), colour[:, 1].flatten()]))[0, 1]
    assert abs(correlation) < 0.02


def test_poisson_noise_variance_grows_with_the_signal():
    levels = torch.tensor([0.1, 0.3, 0.5, 0.7]).view(4, 1, 1, 1).expand(4, 3, 112, 112).contiguous()
    out, _ = PoissonNoise(scale=[1.0, 1.0], grey=0.0)(levels, torch.arange(4))
    variance = (out - levels).var(dim=(1, 2, 3))
    expected = levels[:, 0, 0, 0] / 256  # Poisson: var(k / 256) = x / 256
    assert torch.allclose(variance, expected, rtol=0.06)


# ---- JPEG -----------------------------------------------------------------------------------


@pytest.mark.parametrize("quality", [10, 30, 60, 90])
def test_jpeg_is_close_to_libjpeg_through_opencv(quality, faces):
    ours = to_numpy_uint8(jpeg_round_trip(faces[:16], torch.full((16,), quality))).astype(int)
    reference = np.stack([
        cv2.imdecode(cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 1)[:, :, ::-1]
        for image in to_numpy_uint8(faces[:16])
    ]).astype(int)
    assert np.abs(ours - reference).mean() < 1.5


def test_lower_jpeg_quality_is_farther_from_the_original(faces):
    error = {q: (jpeg_round_trip(faces, torch.full((64,), q)) - faces).abs().mean().item() for q in (30, 90)}
    assert error[30] > 2 * error[90]


def test_one_batch_mixes_jpeg_qualities(faces):
    mixed = jpeg_round_trip(faces[:2], torch.tensor([20, 90]))
    assert torch.equal(mixed[0], jpeg_round_trip(faces[:1], torch.tensor([20]))[0])
    assert torch.equal(mixed[1], jpeg_round_trip(faces[1:2], torch.tensor([90]))[0])


def test_jpeg_handles_sizes_that_are_not_whole_blocks(faces):
    small = faces[:4, :, :14, :14]
    out = Jpeg(quality=[50, 50]).apply(small, {"quality": torch.full((4,), 50)})
    assert out.shape == small.shape and (out - small).abs().mean() < 0.05


# ---- turbulence -----------------------------------------------------------------------------


@pytest.mark.parametrize("strength", [0.25, 1.0, 2.0])
def test_turbulence_tilt_variance_follows_kolmogorov(strength):
    """One-axis tilt variance 0.182 (λ/D)² (D/r0)^{5/3}, i.e. 0.728 (D/r0)^{5/3} px² at Nyquist."""
    op = Turbulence(strength=[strength, strength], sampling=2.0)
    params = op.sample(torch.arange(256), seed=11)
    field = op.tilt_field(params, 112, 112)
    expected = tilt_variance(strength, 2.0)
    assert abs(expected - 0.728 * strength ** (5 / 3)) < 1e-9
    for axis in range(2):
        measured = (field[:, axis] ** 2).mean().item()
        assert abs(measured - expected) < 0.10 * expected


@pytest.mark.parametrize("power", [aperture_averaged_gradient_power(16.0), gaussian_power(8.0)],
                         ids=["tilt", "elastic"])
def test_a_field_drawn_on_a_coarse_grid_keeps_the_variance_and_correlations_of_the_full_grid(power):
    def statistics(field):
        mean_square = (field ** 2).mean()
        return torch.stack([mean_square / 2] + [(field[..., lag:] * field[..., :-lag]).mean() / mean_square
                                                for lag in (1, 4, 8, 16, 32)])

    seeds, variance = torch.arange(256), torch.full((256,), 2.0)
    full = statistics(filtered_field(seeds, 112, 112, power, variance, channels=2))
    coarse = statistics(filtered_field(seeds, 112, 112, power, variance, channels=2, step=4))
    assert torch.allclose(coarse, full, atol=0.03)


def test_fields_are_filtered_on_fft_grids_without_prime_factors_above_7():
    assert [fft_size(n) for n in (2, 23, 46, 56, 58, 62, 97)] == [2, 24, 48, 56, 60, 63, 98]


def test_turbulence_tilt_is_smooth_over_the_isoplanatic_patch():
    op = Turbulence(strength=[1.0, 1.0], patch=16)
    field = op.tilt_field(op.sample(torch.arange(64)), 112, 112)[:, 0]
    def correlation(shift):
        return (field[:, :, shift:] * field[:, :, :-shift]).mean() / (field ** 2).mean()
    assert correlation(1) > 0.95 and correlation(32) < correlation(4)


def test_stronger_turbulence_blurs_and_displaces_more(faces):
    keys = torch.arange(16)
    weak = Turbulence(strength=[0.25, 0.25])(faces[:16], keys)[0]
    strong = Turbulence(strength=[2.0, 2.0])(faces[:16], keys)[0]
    assert (strong - faces[:16]).abs().mean() > 2 * (weak - faces[:16]).abs().mean()
    assert _energy_above(strong, 25) < _energy_above(weak, 25)


def test_turbulence_stronger_than_the_blur_model_holds_caps_the_local_blur_instead_of_failing(faces):
    """Beyond D/r0 of about 2.3 the +4 sd blur bound asked for kernels of 187 px up to 1e31 px: an error
    inside apply. The local width now stops at MAX_BLUR_SIGMA, which D/r0 <= 2 does not reach."""
    strong = Turbulence(strength=[5.0, 20.0])
    params = strong.sample(torch.arange(8))
    sigma_map = strong.blur_sigma_map(params, 112, 112)
    assert sigma_map.max() == MAX_BLUR_SIGMA and (sigma_map == MAX_BLUR_SIGMA).float().mean() > 0.1
    out = strong.apply(faces[:8], params)
    assert out.isfinite().all() and 0 <= out.min() and out.max() <= 1
    def steps(images):  # mean difference of neighbouring pixels: a blur of a few px halves it
        return (images[..., 1:] - images[..., :-1]).abs().mean()
    assert steps(out) < steps(faces[:8]) / 2
    catface = Turbulence(strength=[0.25, 2.0])
    assert catface.blur_sigma_map(catface.sample(torch.arange(1024)), 112, 112).max() < MAX_BLUR_SIGMA / 1.5


# ---- occlusion, illumination, deformation ---------------------------------------------------


def test_erase_fills_exactly_its_box(faces):
    op = RectangleErase(fill=["zero"])
    out, params = op(faces[:16], torch.arange(16))
    inside = (out == 0).all(dim=1).sum(dim=(1, 2))
    assert torch.equal(inside, params["height"] * params["width"])
    changed = (out != faces[:16]).any(dim=1).sum(dim=(1, 2))
    assert (changed <= params["height"] * params["width"]).all()
    assert ((params["height"] * params["width"]) / 112 ** 2 < 0.36).all()


def test_erase_with_mean_fill_uses_each_image_channel_means(faces):
    out, params = RectangleErase(fill=["zero", "mean"])(faces[:16], torch.arange(16))
    corners = out[torch.arange(16), :, params["top"], params["left"]]
    mean_filled = params["fill"] == 1
    assert 0 < mean_filled.sum() < 16
    assert torch.allclose(corners[mean_filled], faces[:16][mean_filled].mean(dim=(2, 3)))
    assert (corners[~mean_filled] == 0).all()


def test_erase_with_noise_fill_draws_uniform_8_bit_levels_inside_the_box(faces):
    out, params = RectangleErase(area=[0.2, 0.2], fill=["noise"])(faces[:16], torch.arange(16))
    boxes = [out[i, :, t:t + h, l:l + w] for i, (t, l, h, w) in
             enumerate(zip(*(params[k].tolist() for k in ("top", "left", "height", "width"))))]
    levels = torch.cat([box.flatten() for box in boxes]) * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)
    assert abs(levels.mean().item() - 127.5) < 2 and abs(levels.std().item() - 73.9) < 1.5
    assert not torch.equal(boxes[0][:, :4, :4], boxes[1][:, :4, :4])


def test_crop_pad_keeps_its_box_in_place_and_zeros_the_rest(faces):
    out, params = CropPad()(faces[:8], torch.arange(8))
    kept = (out != 0).any(dim=1).sum(dim=(1, 2)).float()
    box = (params["height"] * params["width"]).float()
    assert (kept <= box).all() and (kept > 0.95 * box).all()
    top, left = int(params["top"][0]), int(params["left"][0])
    assert torch.equal(out[0, :, top, left], faces[0, :, top, left])


@pytest.mark.parametrize("make", [RectangleErase, CropPad, lambda **size: Resize(sides=[14], **size)])
def test_an_op_drawing_pixels_for_one_face_size_refuses_another_and_takes_it_when_told(faces, make):
    """Boxes drawn for 112 px faces, put on 64 px ones, fell outside a quarter of them: nothing erased."""
    small = faces[:8, :, :64, :64]
    with pytest.raises(ValueError, match="configured for 112x112 inputs \\(its size field\\), got 64x64"):
        make()(small, torch.arange(8))
    out, _ = make(size=64)(small, torch.arange(8))
    assert out.shape == small.shape and (out != small).flatten(1).any(dim=1).all()


def test_neutral_illumination_changes_nothing(faces):
    op = Illumination(brightness=0.0, contrast=1.0, gamma=1.0, gradient=0.0)
    out, _ = op(faces[:8], torch.arange(8))
    assert torch.allclose(out, faces[:8], atol=1e-5)


def test_illumination_gradient_brightens_one_side_and_darkens_the_other(flat_grey):
    op = Illumination(brightness=0.0, contrast=1.0, gamma=1.0, gradient=[0.5, 0.5])
    params = {"brightness": torch.zeros(1), "contrast": torch.ones(1), "gamma": torch.ones(1),
              "gradient": torch.tensor([0.5]), "angle": torch.tensor([0.0])}
    out = op.apply(flat_grey[:1], params)
    assert out[0, 0, 56, -1] > 0.6 and out[0, 0, 56, 0] < 0.4


def test_gamma_above_one_darkens(faces):
    op = Illumination(brightness=0.0, contrast=1.0, gamma=[2.0, 2.0], gradient=0.0)
    assert op(faces[:8], torch.arange(8))[0].mean() < faces[:8].mean() - 0.05


def test_elastic_moves_pixels_by_its_magnitude(faces):
    small, _ = Elastic(magnitude=[0.5, 0.5])(faces[:8], torch.arange(8))
    large, _ = Elastic(magnitude=[3.0, 3.0])(faces[:8], torch.arange(8))
    assert (large - faces[:8]).abs().mean() > 2 * (small - faces[:8]).abs().mean()


# ---- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize("make_bad, field", [
    (lambda: GaussianBlur(sigma=[3.0, 1.0]), "sigma"),
    (lambda: GaussianBlur(kernel_size=[4, 8]), "kernel_size"),
    (lambda: Resize(sides=[7], scale=[0.1, 0.2]), "sides"),
    (lambda: Resize(sides=[200]), "sides"),
    (lambda: Resize(sides=[7, 14], weights=[1]), "weights"),
    (lambda: Jpeg(quality=[0, 50]), "quality"),
    (lambda: RectangleErase(fill=["purple"]), "fill"),
    (lambda: GaussianNoise(grey=1.5), "grey"),
    (lambda: Turbulence(strength="strong"), "strength"),
])
def test_bad_configuration_names_the_field(make_bad, field):
    with pytest.raises(ConfigError) as error:
        make_bad()
    assert error.value.field == field
