"""BTNet: branches implanted at the trunk stage of their side, routing, a frozen trunk, and a
CPU run whose checkpoint `degrade eval` rebuilds and probes with native small faces."""

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from degrade.cli import main
from degrade.recipe import load_recipe
from degrade.sources import open_source
from degrade.sources.subset import SubsetSource
from degrade.stream import PairStream
from trainers.backbones import build_backbone, stage_shapes
from trainers.btnet import BTNet, resize_to
from trainers.evaluate import probe
from trainers.loop import TrainConfig, train
from trainers.registry import build_trainer, load_trained

from .conftest import TEACHER


@pytest.fixture(scope="module")
def btnet():
    torch.manual_seed(0)
    return BTNet(build_backbone("mobilefacenet")).eval()


def test_each_branch_makes_the_map_of_the_first_trunk_stage_of_its_side(btnet):
    shapes = stage_shapes(btnet.trunk)
    assert btnet.implant == {7: 14, 14: 7, 28: 2, 56: 0}
    for side, stage in btnet.implant.items():
        assert shapes[stage][1] == side and all(s[1] > side for s in shapes[:stage])
        with torch.no_grad():
            assert btnet.branches[str(side)](torch.rand(2, 3, side, side)).shape[1:] == shapes[stage]


def test_a_side_with_no_trunk_stage_is_refused_by_name():
    with pytest.raises(ValueError, match="20-px"):
        BTNet(build_backbone("mobilefacenet"), sides=(7, 20))


@pytest.mark.parametrize("selection, expected", [
    ("floor", {5: 7, 7: 7, 10: 7, 20: 14, 21: 14, 40: 28, 56: 56, 80: 56, 112: 112, 200: 112}),
    ("ceil", {5: 7, 7: 7, 10: 14, 20: 28, 21: 28, 40: 56, 56: 56, 80: 112, 112: 112, 200: 112}),
    ("nearest", {5: 7, 7: 7, 10: 7, 20: 14, 21: 28, 40: 28, 56: 56, 80: 56, 112: 112, 200: 112}),
])
def test_branch_selection_by_input_side(btnet, selection, expected):
    btnet.selection = selection
    assert {side: btnet.route(side) for side in expected} == expected
    btnet.selection = "ceil"


def test_an_unknown_selection_is_refused():
    with pytest.raises(ValueError, match="selection 'round'"):
        BTNet(build_backbone("mobilefacenet"), selection="round")


def test_branches_add_the_parameters_of_stem_block_and_projection(btnet):
    trunk = sum(p.numel() for p in btnet.trunk.parameters())
    assert trunk == 999_552
    # 56 px, 64 channels: stem 3x3 (1,728) + BN + PReLU (192), block (2 x 36,864 + 3 BN + PReLU = 74,176),
    # 1x1 projection + BN (4,224)
    assert btnet.added_parameters()[56] == pytest.approx(80_320 / trunk)
    assert btnet.added_parameters()[28] == btnet.added_parameters()[56]
    assert btnet.added_parameters()[7] == btnet.added_parameters()[14] > btnet.added_parameters()[56]


def test_full_size_faces_go_through_the_trunk_unchanged(btnet):
    faces = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.equal(btnet(faces), btnet.trunk(faces))


def test_resize_to_averages_down_and_keeps_the_range_up():
    faces = torch.rand(2, 3, 28, 28)
    assert torch.allclose(resize_to(faces, 14), faces.reshape(2, 3, 14, 2, 14, 2).mean(dim=(3, 5)))
    up = resize_to(faces, 56)
    assert up.shape[-1] == 56 and up.min() >= 0 and up.max() <= 1


def test_native_probe_is_the_small_face_the_up_sampled_probe_is_made_from():
    faces = torch.rand(2, 3, 112, 112)
    small = probe(faces, 14, native=True)
    assert small.shape == (2, 3, 14, 14)
    assert torch.allclose(small, faces.reshape(2, 3, 14, 8, 14, 8).mean(dim=(3, 5)), atol=1e-5)
    assert probe(faces, 14).shape == (2, 3, 112, 112)


def test_the_btnet_recipe_streams_each_lq_side():
    faces = SubsetSource(open_source("demo"), torch.arange(32))
    batch = next(iter(PairStream.from_source(load_recipe("btnet"), faces, batch_size=16, shuffle=False)))
    assert batch["lq"].shape[-1] == 56
    assert set(batch["lq_side"].tolist()) <= {7, 14, 28, 56} and len(set(batch["lq_side"].tolist())) > 1
    for image, side in zip(batch["lq"], batch["lq_side"].tolist()):
        assert image[:, side:, :].sum() == 0 and image[:, :, side:].sum() == 0 and image[:, :side, :side].sum() > 0


def test_training_changes_only_the_branches_and_lowers_the_distillation_loss(tmp_path, lfw_source):
    torch.manual_seed(0)
    faces = SubsetSource(lfw_source, torch.arange(0, 64 * 97, 97))
    trunk = build_backbone("mobilefacenet", TEACHER)
    spec = {"trainer": "btnet", "backbone": "mobilefacenet", "classes": faces.num_identities,
            "sides": [7, 14, 28, 56], "selection": "nearest", "blocks": 1, "loss_weights": [1, 0, 0]}
    trainer = build_trainer(spec, trunk)
    trunk_before = {k: v.clone() for k, v in trainer.backbone.trunk.state_dict().items()}
    branches_before = {k: v.clone() for k, v in trainer.backbone.branches.state_dict().items()}
    stream = PairStream.from_source(load_recipe("btnet"), faces, batch_size=16, shuffle_seed=1)
    rows = train(trainer, stream, TrainConfig(out=tmp_path, steps=24, optimizer="adamw", lr=2e-3, weight_decay=0,
                                              log_every=4, progress=False))
    assert all(torch.equal(v, trunk_before[k]) for k, v in trainer.backbone.trunk.state_dict().items())
    assert not torch.equal(trainer.backbone.branches.state_dict()["56.stem.0.weight"], branches_before["56.stem.0.weight"])
    assert not trainer.head.weight.requires_grad and trainer.head.weight.abs().sum() > 0  # filled with trunk centres
    last_steps = [row["feature_mse"] for row in rows[-3:]]  # each epoch draws afresh: a noisy decline, so averaged
    assert sum(last_steps) / 3 < 0.8 * rows[0]["feature_mse"]
    assert rows[-1]["embedding"] < rows[0]["embedding"]

    rebuilt = load_trained(tmp_path / "last.pt")
    assert rebuilt.native_input and rebuilt.trainer.backbone.sides == (7, 14, 28, 56)
    probes = torch.rand(4, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(rebuilt(probes), trainer.eval().embedding(probes), atol=1e-5)


@pytest.mark.parametrize("lq_sides, loss_is_zero", [([28, 56], True), ([7, 28], False)])
def test_every_branch_gets_a_gradient_in_every_step_also_from_a_batch_none_of_whose_faces_goes_to_it(lq_sides,
                                                                                                   loss_is_zero):
    """DDP needs each rank's step to reach every trainable parameter; a small batch may route no face
    to some branch (here 14 px), or none to any branch at all (28 and 56 px go to the trunk)."""
    torch.manual_seed(0)
    spec = {"trainer": "btnet", "backbone": "mobilefacenet", "classes": 4, "sides": [7, 14],
            "selection": "ceil", "blocks": 1, "loss_weights": [1, 1, 1]}
    trainer = build_trainer(spec, build_backbone("mobilefacenet")).train()
    batch = {"hq": torch.full((2, 3, 112, 112), 128, dtype=torch.uint8), "lq_side": torch.tensor(lq_sides),
             "lq": torch.full((2, 3, 112, 112), 100, dtype=torch.uint8), "identity": torch.tensor([0, 1])}
    loss, _ = trainer(batch)
    loss.backward()
    assert (loss.item() == 0) == loss_is_zero
    assert all(p.grad is not None for p in trainer.backbone.branches.parameters())
    assert all(p.grad.abs().sum() == 0 for p in trainer.backbone.branches["14"].parameters())
    assert all(p.grad.abs().sum() == 0 for p in trainer.backbone.branches["7"].parameters()) == loss_is_zero


def test_two_ranks_train_btnet_under_torchrun_on_batches_that_leave_a_branch_without_faces(tmp_path):
    """With branches at 7 and 14 px and two faces a batch, nearly every step of a rank has a branch
    no face goes to; DDP failed such a run at its second step."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
               "-m", "degrade", "train", "btnet", "--sides", "7,14", "--steps", "6", "-b", "2", "-j", "0",
               "--device", "cpu", "--out", str(tmp_path / "run")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-8000:]  # the ranks' own lines come before torchrun's summary
    assert result.stdout.count("step 6: loss") == 1 and result.stderr.count("warning: no --init") == 1  # rank 0's
    # 6 steps of 2 pairs on each of 2 ranks: each rank streamed its own batches
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["samples_seen"] == 24


def test_btnet_trains_and_evaluates_from_the_command_line(tmp_path, small_pairs):
    run = tmp_path / "bt"
    runner = CliRunner()
    trained = runner.invoke(main, ["train", "btnet", "--source", "demo", "--steps", "4", "-b", "16", "--device", "cpu",
                                   "--sides", "14,28", "--init", str(TEACHER),
                                   "--out", str(run)])
    assert trained.exit_code == 0, trained.output
    assert json.loads((run / "command.json").read_text())["spec"]["sides"] == [14, 28]
    evaluated = runner.invoke(main, ["eval", "--model", f"bt={run / 'last.pt'}", "--selection", "ceil",
                                     "--model", f"teacher=mobilefacenet:{TEACHER}",
                                     "--pairs", str(small_pairs), "--resolutions", "20,112",
                                     "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    # at full size BTNet is its trunk, the teacher, exactly
    assert results["bt"]["same"]["112"] == results["teacher"]["same"]["112"]
    assert results["bt"]["same"]["112"]["accuracy"] > 0.9
    assert results["bt"]["same"]["20"] != results["teacher"]["same"]["20"]


def test_eval_names_a_file_that_is_not_a_training_checkpoint(tmp_path, small_pairs):
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    result = CliRunner().invoke(main, ["eval", "--model", f"x={weights}", "--pairs", str(small_pairs), "--device", "cpu"])
    assert result.exit_code != 0 and "not a degrade training checkpoint" in result.output and "weights.pt" in result.output
