"""Recipes: every shipped recipe loads and runs; a sample's LQ depends only on (recipe, seed, key)."""

import json
import re
import sys
import textwrap

import pytest
import torch
import yaml
from click.testing import CliRunner

from degrade.arrow import BuildError, open_dataset
from degrade.cli import main
from degrade.engine import to_uint8
from degrade.recipe import RecipeError, builtin_recipes, describe, leaf_params, load_recipe, parse_recipe
from degrade.stream import PairStream

from .readme import python_example

RECIPES = sorted(builtin_recipes())


def test_the_shipped_recipes_are_the_documented_ones():
    assert {"maug", "btnet", "catface", "lgaf", "realworld", "mixed"} <= set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_loads_and_degrades_real_faces_and_leaves_its_input_as_it_was(name, faces):
    recipe = load_recipe(name)
    hq = faces[:16].clone()
    lq, params = recipe(hq, torch.arange(16))
    assert torch.equal(hq, faces[:16])
    side = recipe.output_size
    assert lq.shape == (16, 3, side, side)
    assert lq.min() >= 0 and lq.max() <= 1
    assert all(v.shape[0] == 16 for v in params.values())
    if side == recipe.size:
        assert (lq - faces[:16]).abs().mean() > 0.01


@pytest.mark.parametrize("name", RECIPES)
def test_lq_of_a_key_is_identical_for_batch_sizes_1_7_64_and_any_order(name, faces):
    recipe = load_recipe(name)
    keys = torch.arange(1000, 1064)
    full = to_uint8(recipe(faces, keys)[0])
    sevens = torch.cat([to_uint8(recipe(faces[i:i + 7], keys[i:i + 7])[0]) for i in range(0, 64, 7)])
    assert torch.equal(sevens, full)
    singles = torch.cat([to_uint8(recipe(faces[i:i + 1], keys[i:i + 1])[0]) for i in (0, 13, 63)])
    assert torch.equal(singles, full[[0, 13, 63]])
    order = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    shuffled = to_uint8(recipe(faces[order], keys[order])[0])
    assert torch.equal(shuffled, full[order])


@pytest.mark.parametrize("name", RECIPES)
def test_recorded_params_replay_the_whole_recipe(name, faces):
    recipe = load_recipe(name)
    lq, params = recipe(faces[:16], torch.arange(16), seed=5)
    assert torch.equal(recipe.apply(faces[:16], params), lq)


def assert_rounding_only(a: torch.Tensor, b: torch.Tensor, recipe) -> None:
    """Two runs of one recipe that differ only in float rounding (float32 vs float64, CPU vs CUDA).

    Without JPEG no pixel moves by more than one 8-bit level. JPEG rounds DCT coefficients, so
    a rounding difference at a coefficient's rounding boundary moves a whole 8x8 block: measured
    (float32 vs float64, LFW): mean 0.0004-0.0033 levels, under 0.08 % of pixels off by more
    than one level. Bound: mean < 0.05 levels and under 0.5 % of pixels.
    """
    difference = (to_uint8(a).int() - to_uint8(b.to(a.device, a.dtype)).int()).abs()
    if any(leaf.op.name == "jpeg" for leaf in recipe.leaves):
        assert difference.float().mean() < 0.05
        assert (difference > 1).float().mean() < 0.005
    else:
        assert difference.max() <= 1


@pytest.mark.parametrize("name", RECIPES)
def test_float_rounding_moves_pixels_by_at_most_the_stated_bound(name, faces):
    """Stand-in for CPU vs CUDA on a machine without a GPU: float64 against float32."""
    recipe = load_recipe(name)
    keys = torch.arange(64)
    assert_rounding_only(recipe(faces, keys)[0], recipe(faces.double(), keys)[0], recipe)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", RECIPES)
def test_cpu_and_cuda_agree_within_the_stated_bound(name, faces):
    recipe = load_recipe(name)
    keys = torch.arange(64)
    assert_rounding_only(recipe(faces, keys)[0], recipe(faces.cuda(), keys.cuda())[0].cpu(), recipe)


def test_seed_changes_the_draws_and_the_default_seed_is_the_recipes():
    recipe = load_recipe("realworld")
    keys = torch.arange(8)
    assert torch.equal(recipe.sample(keys)["jpeg.quality"], recipe.sample(keys, seed=recipe.seed)["jpeg.quality"])
    assert not torch.equal(recipe.sample(keys, seed=1)["jpeg.quality"], recipe.sample(keys, seed=2)["jpeg.quality"])


@pytest.mark.parametrize("seed", [-1, 2 ** 32])
def test_a_seed_outside_32_bits_is_refused_as_it_would_repeat_another_seeds_draws(tmp_path, seed):
    with pytest.raises(ValueError, match=f"seed {seed} is outside"):
        load_recipe("maug").sample(torch.arange(4), seed=seed)
    assert "field 'seed'" in _error(tmp_path, f"seed: {seed}\nstages:\n  - {{op: jpeg}}\n")
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--seed", str(seed), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "--seed" in result.output and not (tmp_path / "x").exists()


@pytest.mark.parametrize("size", [7, 4097, 2 ** 63, "112", True])
def test_a_face_size_outside_8_to_4096_pixels_is_refused_by_the_recipe(tmp_path, size):
    assert f"field 'size': expected an integer in [8, 4096], got {size!r}" in _error(
        tmp_path, f"size: {size!r}\nstages:\n  - {{op: jpeg}}\n")


def test_whether_a_stage_runs_is_drawn_apart_from_every_draw_of_its_ops():
    """Up to version 0.3 a one-op stage's `applied` was its op's first draw: `{op: jpeg, p: 0.5,
    quality: [30, 90]}` compressed only at qualities 30-60, `lgaf` resized only to scales below 0.575.
    Each param of an op in a stage run on a fraction p has one mean where the stage ran and where it did not."""
    own = parse_recipe({"stages": [{"op": "jpeg", "p": 0.5, "quality": [30, 90]}]})
    recipes = [own] + [load_recipe(name) for name in sorted(builtin_recipes())]
    compared = 0
    for recipe in recipes:
        params = recipe.sample(torch.arange(8000))
        for stage in (stage for stage in recipe.stages if stage.p < 1):
            ran = params[f"{stage.name}.applied"]
            paths = [leaf.path for option in stage.options for leaf in option.leaves]
            own_draws = (f"{stage.name}.applied", f"{stage.name}.choice")
            for name in (name for name in params if name.rsplit(".", 1)[0] in paths and name not in own_draws):
                values = params[name].double()
                there, apart = values[ran], values[~ran]
                error = (there.var() / len(there) + apart.var() / len(apart)).sqrt()
                assert abs(there.mean() - apart.mean()) <= 5 * error, f"{recipe.name}: {name}"
                compared += 1
    assert compared >= 20  # own's quality; mixed's turbulence and erase, lgaf's three stages, realworld's blur_2


def test_an_ops_size_other_than_the_recipes_is_refused_as_every_op_takes_the_recipes_faces(tmp_path):
    assert ("stage 1 (resize): field 'size': 96 is not the recipe's size, 112 (every op takes the recipe's faces; "
            "leave the field out)") in _error(tmp_path, "stages:\n  - {op: resize, sides: [20], size: 96}\n")
    assert parse_recipe({"size": 64, "stages": [{"op": "resize", "sides": [8], "size": 64}]}).size == 64


@pytest.mark.parametrize("images, keys, says", [
    (torch.zeros(2, 3, 112, 112, dtype=torch.uint8), torch.arange(2), "got (2, 3, 112, 112) torch.uint8; for uint8 faces"),
    (torch.rand(2, 1, 112, 112), torch.arange(2), "expects float (N, 3, H, W) images in [0, 1], got (2, 1, 112, 112)"),
    (torch.rand(3, 112, 112), torch.arange(3), "expects float (N, 3, H, W) images in [0, 1], got (3, 112, 112)"),
    (torch.rand(3, 112, 112), torch.arange(1), "expects float (N, 3, H, W) images in [0, 1], got (3, 112, 112)"),
    (torch.rand(2, 3, 112, 112, requires_grad=True), torch.arange(2),
     "expects images that do not require grad (the degradations make data, they are not differentiated through); "
     "pass images.detach()"),
    (torch.rand(2, 3, 112, 112), torch.arange(3), "one integer key per image, got keys of shape (3,)"),
    (torch.rand(2, 3, 112, 112), torch.tensor([0.0, 1.0]), "one integer key per image, got keys of shape (2,) (torch.float32)"),
    (torch.rand(2, 3, 112, 112), None, "one integer key per image, got NoneType keys (Could not infer dtype"),
    (torch.rand(2, 3, 112, 112), ["a", "b"], "one integer key per image, got list keys ("),
    (torch.full((2, 3, 112, 112), 200.0), torch.arange(2), "expects images in [0, 1], got values in [200, 200]; divide 0-255"),
    (torch.full((2, 3, 112, 112), -0.9), torch.arange(2), "expects images in [0, 1], got values in [-0.9, -0.9]"),
    (torch.rand(2, 3, 112, 112).index_put_((torch.tensor([1]),) * 4, torch.tensor(float("nan"))), torch.arange(2),
     "expects images in [0, 1], got 1 NaN value"),
])
def test_a_recipe_refuses_images_or_keys_it_cannot_degrade(images, keys, says):
    # uint8 faces went through as zeros (the resize's matrices were cast to uint8); 0-255 floats came out white
    with pytest.raises(ValueError, match="recipe 'maug': .*" + re.escape(says)):
        load_recipe("maug")(images, keys)


def test_a_recipe_takes_keys_as_a_list_and_an_empty_batch(faces):
    recipe = load_recipe("mixed")
    lq, params = recipe(faces[:3], [0, 1, 2])
    assert torch.equal(lq, recipe(faces[:3], torch.arange(3))[0])
    empty, params = recipe(faces[:0], torch.arange(0))
    assert empty.shape == (0, 3, 112, 112) and all(len(value) == 0 for value in params.values())


def test_a_recipe_draws_params_for_keys_given_as_a_list_and_replays_them():
    recipe, images = load_recipe("mixed"), torch.rand(3, 3, 112, 112)
    assert torch.equal(recipe.apply(images, recipe.sample([4, 5, 6])), recipe(images, torch.tensor([4, 5, 6]))[0])
    with pytest.raises(ValueError, match=re.escape("recipe 'mixed': expects one integer key per image, got keys of "
                                                   "shape (1,) (torch.float32)")):
        recipe.sample([0.5])


def test_a_recipe_refuses_params_of_another_recipe_or_of_other_samples():
    # they failed inside apply: KeyError 'turbulence.applied', or a size mismatch of tensors
    recipe, images = load_recipe("mixed"), torch.rand(3, 3, 112, 112)
    with pytest.raises(ValueError, match=re.escape("recipe 'mixed': params without erase.applied, erase.fill, "
                                                   "erase.height, ..., which this recipe draws: were they drawn by "
                                                   "another recipe? Draw them with recipe.sample(keys)")):
        recipe.apply(images, load_recipe("maug").sample(torch.arange(3)))
    with pytest.raises(ValueError, match=re.escape("recipe 'mixed': params of 3 samples for 2 images")):
        recipe.apply(images[:2], recipe.sample(torch.arange(3)))


def test_catface_splits_consecutive_keys_in_half_and_the_seed_shifts_the_split():
    keys, catface = torch.arange(10, 74), load_recipe("catface")
    assert torch.equal(catface.sample(keys)["capture.choice"], keys % 2)  # seed 0: even keys turbulence
    assert torch.equal(catface.sample(keys, seed=7)["capture.choice"], (keys + 1) % 2)


def test_a_samples_description_names_the_ops_applied_and_their_params_in_a_few_characters():
    catface = load_recipe("catface")
    params = catface.sample(torch.arange(2))  # key 0: turbulence, key 1: unconstrained capture
    params["capture.unconstrained.motion_blur.angle"][1] = 104.2
    params["capture.unconstrained.motion_blur.length"][1] = 3.25
    params["capture.unconstrained.gaussian_noise.grey"][1] = False
    side = int(params["capture.unconstrained.resize.side"][1])
    assert describe(catface, params, 0) == [f"turbulence strength={float(params['capture.turbulence.strength'][0]):.2g}"]
    motion, resize, noise = describe(catface, params, 1)
    assert motion.startswith("motion_blur length=3.2 angle=104 kernel_size=")
    assert resize == f"resize side={side}"
    assert noise.startswith("gaussian_noise sigma=") and noise.endswith("grey=n")


def test_btnet_records_native_sides():
    recipe = load_recipe("btnet")
    sides = recipe.sample(torch.arange(4000))["resize.side"]
    assert set(sides.unique().tolist()) == {7, 14, 28, 56}
    assert recipe.output_size == 56


def test_probability_applies_a_stage_to_that_fraction_of_samples(faces):
    recipe = load_recipe("lgaf")
    applied = recipe.sample(torch.arange(10000))["elastic.applied"]
    assert abs(applied.float().mean().item() - 0.5) < 0.02
    lq, params = recipe(faces[:32], torch.arange(32))
    untouched = ~(params["occlusion.applied"] | params["elastic.applied"] | params["resize.applied"])
    assert untouched.any()
    assert torch.equal(lq[untouched], faces[:32][untouched])


@pytest.mark.parametrize("output", ["input", "native"])
def test_a_gaussian_blur_before_a_resize_is_folded_into_it_and_gives_the_same_pairs(output, faces, monkeypatch):
    recipe = parse_recipe({"stages": [{"op": "gaussian_blur", "p": 0.6, "sigma": [0.5, 3.0]},
                                      {"op": "resize", "sides": [7, 14, 20], "output": output}]})
    params = recipe.sample(torch.arange(32))
    blur, resize = recipe.leaves
    blurred = blur.op.apply(faces[:32], leaf_params(params, blur))
    in_turn = resize.op.apply(torch.where(params["gaussian_blur.applied"].view(-1, 1, 1, 1), blurred, faces[:32]),
                              leaf_params(params, resize))
    monkeypatch.setattr(type(blur.op), "apply", lambda *args: pytest.fail("the blur ran on its own"))
    assert (recipe.apply(faces[:32], params) - in_turn).abs().max() < 1e-5


@pytest.mark.parametrize("op", ["erase", "crop_pad"])
def test_a_box_op_run_on_a_fraction_of_the_batch_changes_exactly_those_samples(op, faces):
    recipe = parse_recipe({"stages": [{"op": op, "p": 0.5}]})
    lq, params = recipe(faces[:32], torch.arange(32))
    chosen = params[f"{op}.applied"]
    assert 0 < chosen.sum() < 32
    assert torch.equal(lq[~chosen], faces[:32][~chosen])
    own = leaf_params(params, recipe.leaves[0])
    alone = recipe.leaves[0].op.apply(faces[:32][chosen], {k: v[chosen] for k, v in own.items()})
    assert torch.equal(lq[chosen], alone) and not torch.equal(alone, faces[:32][chosen])


def test_adding_a_stage_does_not_change_the_draws_of_the_others(tmp_path):
    one = tmp_path / "one.yaml"
    one.write_text("stages:\n  - {op: jpeg}\n")
    two = tmp_path / "two.yaml"
    two.write_text("stages:\n  - {op: gaussian_noise}\n  - {op: jpeg}\n")
    keys = torch.arange(32)
    assert torch.equal(load_recipe(one).sample(keys)["jpeg.quality"], load_recipe(two).sample(keys)["jpeg.quality"])


# ---- errors ---------------------------------------------------------------------------------


def _error(tmp_path, text: str) -> str:
    path = tmp_path / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    with pytest.raises(RecipeError) as error:
        load_recipe(path)
    return str(error.value)


@pytest.mark.parametrize("text, says", [
    ("", "bad.yaml: top level: expected a mapping with 'stages' (and optionally name, description, seed, size)"),
    ("- op: jpeg\n", "bad.yaml: top level: expected a mapping with 'stages'"),
    ("stages: [{op: jpeg}]\nstage: [{op: erase}]\n1: one\n", "bad.yaml: top level: unknown field(s) 1, stage (a recipe's "
                                                             "fields: name, description, seed, size, stages)"),
    ("description: [1, 2]\nstages: [{op: jpeg}]\n", "bad.yaml: field 'description': expected one line of text, got [1, 2]"),
    ("stages:\n  - jpeg\n", "bad.yaml: stage 1 (?): expected a mapping, got the text 'jpeg'; an op is written {op: jpeg}"),
    ("stages:\n  - one_of: [jpeg, {op: erase}]\n",
     "stage 1 (one_of), option 1: expected a mapping, got the text 'jpeg'; an op is written {op: jpeg}"),
    ("stages: [3]\n", "bad.yaml: stage 1 (?): expected a mapping, got 3"),
])
def test_a_recipe_that_is_not_a_mapping_of_its_fields_is_refused_naming_them(tmp_path, text, says):
    assert says in _error(tmp_path, text)


@pytest.mark.parametrize("text, says", [
    ("stages: [{op: jpg}]\n", "stage 1 (jpg): unknown op 'jpg'; did you mean 'jpeg'? (known ops: resize,"),
    ("stages: [{op: jpeg, qualty: 50}]\n",
     "stage 1 (jpeg): field 'qualty' is not a field of op 'jpeg'; did you mean 'quality'? (its fields: quality)"),
    ("sead: 3\nstages: [{op: jpeg}]\n", "top level: unknown field(s) sead; did you mean 'seed'? (a recipe's fields:"),
    ("stages: [{op: sharpen}]\n", "unknown op 'sharpen' (known ops:"),
])
def test_a_misspelt_op_or_field_is_named_with_the_one_it_is_close_to(tmp_path, text, says):
    assert says in _error(tmp_path, text)


def test_a_misspelt_recipe_name_is_named_with_the_built_in_one_it_is_close_to():
    with pytest.raises(RecipeError, match=re.escape("unknown recipe 'mauq'; did you mean 'maug'? (built-in recipes: btnet")):
        load_recipe("mauq")


def test_unknown_op_names_the_file_the_stage_and_the_known_ops(tmp_path):
    message = _error(tmp_path, """
        stages:
          - op: resize
            sides: [7]
          - op: sharpen
        """)
    assert "bad.yaml" in message and "stage 2 (sharpen)" in message and "unknown op 'sharpen'" in message
    assert "gaussian_blur" in message


def test_bad_range_names_the_stage_and_field(tmp_path):
    message = _error(tmp_path, """
        stages:
          - op: gaussian_blur
            sigma: [3, 1]
        """)
    assert "stage 1 (gaussian_blur)" in message and "field 'sigma'" in message and "above high" in message
    assert "field 'sigma': expected numbers, got [nan, 1]" in _error(tmp_path, "stages:\n  - {op: gaussian_blur, sigma: [.nan, 1]}\n")


def test_wrong_type_names_the_stage_and_field(tmp_path):
    message = _error(tmp_path, """
        stages:
          - op: jpeg
            quality: high
        """)
    assert "stage 1 (jpeg)" in message and "field 'quality'" in message


def test_unknown_field_names_the_ops_fields(tmp_path):
    message = _error(tmp_path, """
        stages:
          - op: jpeg
            qualty: [30, 40]
        """)
    assert "'qualty' is not a field of op 'jpeg'" in message and "quality" in message


def test_error_inside_a_one_of_option_names_the_option(tmp_path):
    message = _error(tmp_path, """
        stages:
          - name: blur
            one_of:
              - {op: gaussian_blur}
              - {op: motion_blur, length: -3}
        """)
    assert "stage 1 (blur), option 2" in message and "field 'length'" in message


@pytest.mark.parametrize("stage, says", [
    ("{name: blur, one_of: [{op: gaussian_blur, p: 0.5}, {op: motion_blur}]}",
     "stage 1 (blur), option 1: field 'p' is a stage's probability"),
    ("{name: blur, one_of: [{op: gaussian_blur}, {stages: [{op: motion_blur, p: 0.3}, {op: jpeg}]}]}",
     "stage 1 (blur), option 2, op 1: field 'p' is a stage's probability"),
    ("{op: jpeg, weight: 2}", "stage 1 (jpeg): field 'weight' weights an option of one_of"),
    ("{op: jpeg, split: key}", "stage 1 (jpeg): field 'split' goes with one_of"),
    ("{name: blur, one_of: [{op: gaussian_blur}, {op: motion_blur}], sigma: [1, 2]}",
     "stage 1 (blur): field 'sigma' is not a field of a one_of stage"),
    ("{name: blur, one_of: [{op: gaussian_blur}, {op: motion_blur, stages: [{op: jpeg}]}]}",
     "stage 1 (blur), option 2: field 'op' cannot stand beside 'stages'"),
    ("{name: blur, one_of: [{op: jpeg}, {stages: [{one_of: [{op: jpeg}, {op: motion_blur}]}]}]}",
     "stage 1 (blur), option 2, op 1: field 'one_of' cannot stand inside one_of"),
    ("{name: blur, split: key, one_of: [{op: jpeg, weight: 1}, {op: motion_blur, weight: 3}]}",
     "stage 1 (blur), option 1: field 'weight': split: key takes the options in turn by key, in equal shares"),
])
def test_a_field_that_would_be_ignored_where_it_stands_is_refused(tmp_path, stage, says):
    assert says in _error(tmp_path, f"stages:\n  - {stage}\n")


@pytest.mark.parametrize("stage, says", [
    ("{name: blur, one_of: [{op: jpeg, weight: 0}, {op: motion_blur, weight: 0}]}",
     "stage 1 (blur): field 'one_of': every option has weight 0"),
    ("{name: blur, one_of: [{op: jpeg, weight: .nan}, {op: motion_blur}]}",
     "stage 1 (blur), option 1: field 'weight': expected a finite number >= 0, got nan"),
    ("{name: blur, one_of: [{op: jpeg}, {op: motion_blur, weight: .inf}]}",
     "stage 1 (blur), option 2: field 'weight': expected a finite number >= 0, got inf"),
    ("{op: resize, sides: [7, 14], weights: [0, 0]}", "field 'weights': expected 2 finite numbers >= 0, not all 0"),
    ("{op: resize, sides: [7, 14], weights: [.inf, 1]}", "field 'weights': expected 2 finite numbers >= 0, not all 0"),
    ("{name: blur, one_of: [{op: jpeg, weight: true}, {op: motion_blur}]}",
     "stage 1 (blur), option 1: field 'weight': expected a finite number >= 0, got True"),
    ("{op: resize, sides: [7, 14], weights: [true, 1]}", "field 'weights': expected 2 finite numbers >= 0, not all 0"),
])
def test_weights_that_choose_nothing_or_no_share_are_refused(tmp_path, stage, says):
    """All-zero, NaN or infinite weights gave every sample the last option (an infinite weight: not its own);
    a yes/no is no weight, in a one_of as in resize's sides."""
    assert says in _error(tmp_path, f"stages:\n  - {stage}\n")


@pytest.mark.parametrize("stage, says", [
    ("{op: resize, scale: [0.001, 0.5]}", "stage 1 (resize): field 'scale': [0.001, 0.5] is outside the allowed "
                                          "[0.00892857, 1]"),
    ("{op: jpeg, quality: [90, 30]}", "stage 1 (jpeg): field 'quality': low 90.0 is above high 30.0"),
    ("{op: gaussian_blur, sigma: [1, .nan]}", "stage 1 (gaussian_blur): field 'sigma': expected numbers, got [1, nan]"),
    ("{op: erase, area: [0.1]}", "stage 1 (erase): field 'area': expected a number or a [low, high] pair, got [0.1]"),
])
def test_a_range_out_of_its_bounds_or_reversed_is_refused_saying_the_bounds(tmp_path, stage, says):
    """The bounds read as numbers do: resize's least scale for 112 px faces is 1/112, not 0.008928571428571428."""
    assert says in _error(tmp_path, f"stages:\n  - {stage}\n")


@pytest.mark.parametrize("stage, says", [
    ("{op: jpeg, name: a.b}", "stage 1 (a.b): field 'name': expected letters, digits, '_' or '-'"),
    ("{op: jpeg, name: ''}", "got ''"),
    ("{op: jpeg, name: 3}", "got 3"),
    ("{name: blur, one_of: [{op: jpeg, name: applied}, {op: motion_blur}]}",
     "stage 1 (blur), option 1: field 'name': expected letters, digits, '_' or '-' (it is part of the dotted paths "
     "of the params), and neither applied nor choice, got 'applied'"),
    ("{name: blur, one_of: [{op: jpeg}, {name: x.y, stages: [{op: motion_blur}]}]}", "option 2: field 'name'"),
    ("{name: blur, one_of: [{op: jpeg}, {stages: [{op: motion_blur, name: choice}]}]}", "option 2, op 1: field 'name'"),
])
def test_a_name_that_would_let_two_params_paths_meet_is_refused(tmp_path, stage, says):
    """A dot let a stage named 'a.q' and option 'q' of group 'a' share the params 'a.q.*'; an option
    named 'applied' broke the build's params column."""
    assert says in _error(tmp_path, f"stages:\n  - {stage}\n")


@pytest.mark.parametrize("name", ["../elsewhere", "a/b", ".hidden", "", 3, None])
def test_a_recipe_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    """A build goes to out/<name> by default: '../elsewhere' wrote outside it, no name wrote out/None."""
    assert "field 'name'" in _error(tmp_path, yaml.safe_dump({"name": name, "stages": [{"op": "jpeg"}]}))


def test_ops_named_alike_in_one_chain_each_get_their_own_params_as_stages_do(tmp_path):
    """Both JPEGs of the chain drew the second's quality; named jpeg and jpeg_2 they draw their own."""
    path = tmp_path / "chain.yaml"
    path.write_text(textwrap.dedent("""
        stages:
          - {op: jpeg, quality: 50}
          - {op: jpeg, quality: 60}
          - one_of:
              - {stages: [{op: jpeg, quality: 10}, {op: jpeg, quality: 90}]}
              - {op: gaussian_blur}
        """))
    params = load_recipe(path).sample(torch.arange(4))
    assert [leaf.path for leaf in load_recipe(path).leaves] == [
        "jpeg", "jpeg_2", "one_of.option1.jpeg", "one_of.option1.jpeg_2", "one_of.gaussian_blur"]
    assert [int(params[f"{leaf}.quality"][0]) for leaf in ("jpeg", "jpeg_2", "one_of.option1.jpeg",
                                                           "one_of.option1.jpeg_2")] == [50, 60, 10, 90]


def test_bad_probability_and_bad_yaml_and_unknown_recipe(tmp_path):
    assert "field 'p'" in _error(tmp_path, "stages:\n  - {op: jpeg, p: 2}\n")
    assert "not valid YAML" in _error(tmp_path, "stages: [\n")
    assert "expected a non-empty list" in _error(tmp_path, "name: x\n")
    with pytest.raises(RecipeError, match="unknown recipe 'nope'.*maug"):
        load_recipe("nope")


def test_a_built_in_name_is_the_built_in_recipe_whatever_lies_in_the_current_folder(tmp_path, monkeypatch):
    """`degrade build --recipe maug --out maug`, run again to resume, said 'maug: no such recipe file'."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "maug").mkdir()
    (tmp_path / "catface").write_text("not a recipe")
    assert load_recipe("maug").name == "maug" and load_recipe("catface").name == "catface"
    with pytest.raises(RecipeError, match="^maug: a folder, not a recipe file$"):
        load_recipe("./maug")
    with pytest.raises(RecipeError, match="^nope.yaml: no such recipe file$"):
        load_recipe("nope.yaml")


def test_a_recipe_file_that_is_not_utf8_text_is_refused_and_one_with_a_byte_order_mark_read(tmp_path):
    """A Latin-1 description, or an image given by mistake, ended in a UnicodeDecodeError traceback."""
    latin1, image = tmp_path / "latin1.yaml", tmp_path / "image.yaml"
    latin1.write_bytes('description: "M\xe4nner"\nstages: [{op: jpeg}]\n'.encode("latin-1"))
    image.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF")
    for path, byte in ((latin1, 16), (image, 1)):
        with pytest.raises(RecipeError) as error:
            load_recipe(path)
        assert str(error.value) == f"{path}: not UTF-8 text (byte {byte}); a recipe is a YAML file in UTF-8"
    marked = tmp_path / "marked.yaml"
    marked.write_bytes("stages: [{op: jpeg, quality: 50}]\n".encode("utf-8-sig"))
    assert load_recipe(marked).stages[0].options[0].leaves[0].op.quality == [50, 50]


def test_a_key_given_twice_in_one_mapping_is_refused_naming_its_line_where_yaml_would_keep_the_last(tmp_path):
    assert ("bad.yaml: not valid YAML: line 4: the key 'quality' is given twice in one mapping"
            in _error(tmp_path, "stages:\n  - op: jpeg\n    quality: [30, 40]\n    quality: [80, 90]\n"))
    assert "line 2: the key 'stages' is given twice" in _error(tmp_path, "stages: [{op: jpeg}]\nstages: [{op: erase}]\n")
    merged = tmp_path / "merged.yaml"  # a key after a YAML merge (<<) overrides the merged one, as YAML says
    merged.write_text("stages:\n  - &jpeg {op: jpeg, quality: [30, 40]}\n  - {<<: *jpeg, quality: [80, 90]}\n")
    assert load_recipe(merged).stages[1].options[0].leaves[0].op.quality == [80, 90]


def test_numbers_in_exponent_notation_are_read_as_numbers(tmp_path):
    # PyYAML (YAML 1.1) read 1e1 and 2e-1 as text: "expected a number or a [low, high] pair, got ['1e1', ...]"
    recipe = tmp_path / "exponents.yaml"
    recipe.write_text("stages:\n  - {op: gaussian_blur, sigma: [2e-1, 1.5e0]}\n  - {op: jpeg, quality: [1e1, 9E+1]}\n"
                      "  - {op: erase, p: 5e-1}\n")
    blur, jpeg, erase = (stage.options[0].leaves[0].op for stage in load_recipe(recipe).stages)
    assert blur.sigma == [0.2, 1.5] and jpeg.quality == [10, 90] and load_recipe(recipe).stages[2].p == 0.5


def test_native_size_must_be_the_last_stage(tmp_path):
    message = _error(tmp_path, """
        stages:
          - {op: resize, sides: [7], output: native}
          - {op: jpeg}
        """)
    assert "must be the last stage" in message


def test_native_sides_come_from_the_native_stage_whatever_its_name(tmp_path):
    path = tmp_path / "named.yaml"
    path.write_text("stages:\n  - {op: resize, name: shrink, sides: [7, 14], output: native}\n")
    recipe = load_recipe(path)
    params = recipe.sample(torch.arange(8))
    assert torch.equal(recipe.native_sides(params), params["shrink.side"])
    assert load_recipe("maug").native_sides(load_recipe("maug").sample(torch.arange(8))) is None


# ---- ops of your own ------------------------------------------------------------------------

# The README's example, and ops that break its rules.
OWN_OPS = python_example("# my_ops.py") + '''

@dataclasses.dataclass
class TakesJpegsName(Vignette):
    name = "jpeg"


@dataclasses.dataclass
class DrawsPairs(Vignette):
    name = "pairs"

    def draw(self, rng):
        return {"centre": torch.stack([rng.uniform(0, 1), rng.uniform(0, 1)], dim=1)}


class NotAnOp:
    name = "plain"


@dataclasses.dataclass
class Crops(Vignette):
    name = "crops"

    def apply(self, images, params):
        return images[..., :100, :100]


@dataclasses.dataclass
class MakesBytes(Vignette):
    name = "bytes"

    def apply(self, images, params):
        return (images * 255).to(torch.uint8)


@dataclasses.dataclass
class DividesByZero(Vignette):
    name = "zero"

    def apply(self, images, params):
        return images / 0


@dataclasses.dataclass
class Brightens(Vignette):
    name = "brighter"

    def apply(self, images, params):
        return images * 2


@dataclasses.dataclass
class WritesInPlace(Vignette):
    name = "in_place"

    def apply(self, images, params):
        return images.mul_(0.5)


@dataclasses.dataclass
class Fails(Vignette):
    name = "fails"

    def apply(self, images, params):
        return images * params["strenght"]
'''


@pytest.fixture
def own_ops(tmp_path, monkeypatch):
    (tmp_path / "my_ops.py").write_text(OWN_OPS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("my_ops", None)


def test_an_op_of_your_own_named_module_colon_class_is_drawn_stored_and_replayed_like_a_built_in_one(
        tmp_path, own_ops, faces):
    recipe_path = tmp_path / "mine.yaml"
    recipe_path.write_text("name: mine\nstages:\n  - {op: 'my_ops:Vignette', strength: [0.5, 0.6]}\n  - {op: jpeg}\n")
    recipe = load_recipe(recipe_path)
    lq, params = recipe(faces[:8], keys=torch.arange(8))
    assert [leaf.path for leaf in recipe.leaves] == ["vignette", "jpeg"]
    assert ((params["vignette.strength"] >= 0.5) & (params["vignette.strength"] <= 0.6)).all()
    assert torch.equal(recipe.apply(faces[:8], params), lq)
    corner_ratio = lq[..., :12, :12].mean() / faces[:8, :, :12, :12].mean()
    assert 0.4 < corner_ratio < 0.6 and lq[..., 50:62, 50:62].mean() / faces[:8, :, 50:62, 50:62].mean() > 0.95
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--recipe", str(recipe_path), "--limit", "16", "-j", "1",
                                       "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = open_dataset(out)
    assert rows[3]["params"]["vignette"]["strength"] == pytest.approx(float(recipe.sample(torch.tensor([3]))["vignette.strength"]))


def test_a_build_is_resumed_only_with_the_code_its_own_ops_had(tmp_path, own_ops):
    """degrade's own code is known by its version; an op of your own edited between an interrupted
    build and its resume would make the rest of the pairs with other code, without a word."""
    (tmp_path / "mine.yaml").write_text("stages:\n  - {op: 'my_ops:Vignette'}\n")
    command = ["build", "--recipe", str(tmp_path / "mine.yaml"), "--limit", "8", "-j", "0", "--device", "cpu",
               "--out", str(tmp_path / "out")]
    assert CliRunner().invoke(main, command).exit_code == 0
    manifest = json.loads((tmp_path / "out" / "degrade.json").read_text())
    assert list(manifest["own_ops_code"]) == ["my_ops"] and "own_ops_code" not in _manifest_of_builtin(tmp_path)
    assert CliRunner().invoke(main, command).exit_code == 0  # the same code: the same build
    (tmp_path / "my_ops.py").write_text(OWN_OPS.replace("[0.2, 0.8]", "[0.4, 0.8]"))
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1
    assert "holds a different build (the code of the recipe's own ops); use a new --out or delete it" in result.output


def _manifest_of_builtin(tmp_path) -> dict:
    assert CliRunner().invoke(main, ["build", "--recipe", "maug", "--limit", "2", "-j", "0", "--device", "cpu",
                                     "--out", str(tmp_path / "maug")]).exit_code == 0
    return json.loads((tmp_path / "maug" / "degrade.json").read_text())


def test_an_own_op_module_in_the_current_folder_is_found_without_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "my_ops.py").write_text(OWN_OPS)
    (tmp_path / "mine.yaml").write_text("stages:\n  - {op: 'my_ops:Vignette', strength: [0.5, 0.6]}\n")
    monkeypatch.setattr(sys, "path", [entry for entry in sys.path if entry not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_ops", raising=False)
    monkeypatch.chdir(tmp_path)  # as `degrade build` run in the module's folder: the console script's path lacks it
    result = CliRunner().invoke(main, ["build", "--recipe", "mine.yaml", "--limit", "4", "-j", "0",
                                       "--device", "cpu", "--out", "out"])
    assert result.exit_code == 0, result.output
    assert 0.5 <= open_dataset(tmp_path / "out")[0]["params"]["vignette"]["strength"] <= 0.6
    sys.modules.pop("my_ops", None)


def test_a_build_whose_own_op_cannot_be_imported_here_is_named_by_inspect_and_by_streams(tmp_path, own_ops,
                                                                                        monkeypatch):
    (tmp_path / "mine.yaml").write_text("stages:\n  - {op: 'my_ops:Vignette'}\n")
    assert CliRunner().invoke(main, ["build", "--recipe", str(tmp_path / "mine.yaml"), "--limit", "4", "-j", "0",
                                     "--device", "cpu", "--out", str(tmp_path / "out")]).exit_code == 0
    monkeypatch.delitem(sys.modules, "my_ops")
    sys.path.remove(str(tmp_path))  # as in a shell without the module's folder on PYTHONPATH
    says = f"{tmp_path / 'out'}: its recipe cannot be loaded here (mine: stage 1 (my_ops:Vignette): 'my_ops:Vignette': " \
           "cannot import 'my_ops'"
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 1 and says in result.output
    with pytest.raises(BuildError, match=re.escape(says)):
        PairStream.from_dataset(tmp_path / "out", batch_size=2)


@pytest.mark.parametrize("op, says", [
    ("no_such_module:Vignette", "'no_such_module:Vignette': cannot import 'no_such_module' (No module named "
                                "'no_such_module'); put it in the current folder, install it or put its "
                                "folder on PYTHONPATH"),
    ("my_ops:Vignete", "'my_ops:Vignete': my_ops has no Op dataclass named 'Vignete'"),
    ("my_ops:NotAnOp", "my_ops has no Op dataclass named 'NotAnOp'"),
    ("my_ops:TakesJpegsName", "its `name` must be letters, digits, '_' or '-', and not a built-in op's"),
    ("my_ops:DrawsPairs", "op 'pairs' draws 'centre' as (2, 2) for 2 samples; a param is one bool, integer or float"),
    # each of these went into a build without a word: a 100 px LQ, white, black, clipped, or the caller's images changed
    ("my_ops:Crops", "op 'crops' returns (2, 3, 100, 100) for (2, 3, 112, 112) images; an op returns images of the "
                     "size it is given"),
    ("my_ops:MakesBytes", "op 'bytes' returns torch.uint8 for float32 images; an op returns float images of the dtype "
                          "it is given, in [0, 1]"),
    ("my_ops:DividesByZero", "op 'zero' returns NaN or infinite values for images in [0, 1]; an op returns images in "
                             "[0, 1] (clamp them)"),
    ("my_ops:Brightens", "op 'brighter' returns values in [0.2"),
    ("my_ops:WritesInPlace", "op 'in_place' writes into the images it is given; return new ones (images.mul(w) rather "
                             "than images.mul_(w))"),
    ("my_ops:Fails", "op 'fails' fails on two faces of 112 px: KeyError: 'strenght'"),
])
def test_an_op_of_your_own_that_cannot_be_used_is_refused_naming_it(tmp_path, own_ops, op, says):
    message = _error(tmp_path, f"stages:\n  - {{op: '{op}'}}\n")
    assert "stage 1" in message and says in message


def test_bench_refuses_a_recipe_with_an_op_of_your_own_as_the_opencv_loop_has_no_twin_of_it(tmp_path, own_ops):
    (tmp_path / "mine.yaml").write_text("stages:\n  - {op: 'my_ops:Vignette'}\n")
    result = CliRunner().invoke(main, ["bench", "--recipe", str(tmp_path / "mine.yaml"), "--device", "cpu"])
    assert result.exit_code == 2 and "the OpenCV loop has no twin of your own op vignette" in result.output
