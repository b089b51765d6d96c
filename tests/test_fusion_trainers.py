"""LGAF and CATFace building blocks against their equations, and short CPU runs of both trainers."""

import math

import pytest
import torch

from degrade.recipe import load_recipe
from degrade.sources import open_source
from degrade.sources.attributes import Attributes
from degrade.sources.subset import SubsetSource
from degrade.stream import PairStream
from trainers.backbones import build_backbone, feature_shape
from trainers.catface import (CAF, CATF, MFFNL, CATFaceStage1, CATFaceStage2, TokenSelfAttention, attribute_targets,
                              sad_loss, weighted_bce)
from trainers.lgaf import LGAF, MHMS, LocalGlobalFusion
from trainers.loop import TrainConfig, train


def test_lgf_weights_favour_the_stronger_feature_and_sum_to_one():
    fusion = LocalGlobalFusion().train()
    local = torch.tensor([10.0, 1.0, 5.0, 5.0])[:, None] * torch.ones(4, 8) / math.sqrt(8)
    global_ = torch.tensor([1.0, 10.0, 5.0, 5.0])[:, None] * torch.ones(4, 8) / math.sqrt(8)
    weights = fusion.weights(local, global_)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4))
    assert weights[0, 0] > 0.7 and weights[1, 0] < 0.3
    assert torch.allclose(fusion(local, global_), weights[:, :1] * local + weights[:, 1:] * global_)


def test_mhms_splits_its_width_over_b_heads():
    features = torch.randn(2, 64, 7, 6)
    two, four = MHMS(64, 7, 6, 32, heads=2), MHMS(64, 7, 6, 32, heads=4)
    assert two(features).shape == four(features).shape == (2, 32)
    assert len(four.heads) == 4 and four.heads[0].near[0].out_channels == 8
    assert len(two.heads) == 2 and two.heads[0].near[0].out_channels == 16


@pytest.mark.parametrize("mode, size", [("local", 128), ("global", 128), ("concat", 256), ("lgf", 128)])
def test_lgaf_modes_embed_to_their_size(mode, size):
    backbone = build_backbone("mobilefacenet")
    model = LGAF(backbone, 5, feature_shape(backbone), mode=mode, heads=2)
    assert model.embedding(torch.rand(2, 3, 112, 112)).shape == (2, size)


def test_self_attention_mixes_values_convexly():
    attention = TokenSelfAttention(16)
    a, v = attention(torch.randn(2, 16, 4, 4))
    assert a.shape == v.shape == (2, 16, 16)
    assert (a <= v.max(dim=1, keepdim=True).values + 1e-5).all() and (a >= v.min(dim=1, keepdim=True).values - 1e-5).all()


def test_sad_loss_is_zero_for_matching_views_and_four_for_opposite_ones():
    a, v = torch.randn(3, 16, 8), torch.randn(3, 16, 8)
    assert sad_loss((a, v), (a, v)).item() == pytest.approx(0.0, abs=1e-6)
    assert sad_loss((a, v), (-a, -v)).item() == pytest.approx(4.0, abs=1e-6)


def test_weighted_bce_weights_male_and_bald_by_one_others_by_half_and_skips_unknowns():
    names = ("Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes")
    labels = torch.tensor([[1.0, 0.0, 1.0, float("nan"), 0.0]])
    loss = weighted_bce(torch.zeros(1, 5), labels, names)
    assert loss.item() == pytest.approx((1 + 1 + 0.5 + 0.5) * math.log(2) / 4)


def test_lfw_gender_labels_resolve_male_from_male_and_female():
    names = ("Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes", "Female")
    values = torch.tensor([[1.0, 0, 0, 0, 0, 0], [0.0, 0, 0, 0, 0, 1], [0.0, 1, 0, 0, 0, 0]])
    targets = attribute_targets(values, names)
    assert targets.shape == (3, 5)
    assert targets[0, 0] == 1 and targets[1, 0] == 0 and torch.isnan(targets[2, 0]) and targets[2, 1] == 1


def test_mffnl_has_depthwise_3x3_1x7_7x1_streams_and_keeps_the_shape():
    block = MFFNL(16)
    assert [tuple(s.kernel_size) for s in block.streams] == [(3, 3), (1, 7), (7, 1)]
    assert all(s.groups == s.in_channels for s in block.streams)
    assert block(torch.randn(2, 16, 7, 6)).shape == (2, 16, 7, 6)


def test_caf_attends_only_within_a_channel_group():
    caf = CAF(16, groups=4)
    with torch.no_grad():
        caf.gamma.fill_(1.0)
    x = torch.randn(1, 16, 7, 6)
    changed = x.clone()
    changed[:, 0] += 1.0  # a channel of group 0
    difference = (caf(changed) - caf(x)).abs().flatten(2).sum(dim=2)[0]
    assert difference[:4].sum() > 0 and difference[4:].sum() == 0


def test_catf_recognition_output_depends_on_the_attribute_branch():
    catf = CATF(16, heads=4, groups=4).eval()
    recognition, attribute = torch.randn(2, 16, 7, 6), torch.randn(2, 16, 7, 6)
    out = catf(recognition, attribute)
    assert out.shape == (2, 16, 7, 6)
    assert not torch.allclose(out, catf(recognition, attribute + 1.0))


def demo_stream(attributes=None):
    faces = SubsetSource(open_source("demo"), torch.arange(40))
    return PairStream.from_source(load_recipe("catface"), faces, batch_size=8, attributes=attributes), faces


def test_catface_stages_train_on_streamed_pairs_with_attributes(tmp_path):
    table = tmp_path / "attributes.csv"
    table.write_text("identity,Male,Bald,Big Nose,Chubby,Narrow Eyes\n"
                     + "".join(f"demo_{i:05d},{i % 2},0,1,0,{i % 3 == 0:d}\n" for i in range(4)))
    stream, faces = demo_stream(Attributes(table))
    assert next(iter(stream))["attributes"].shape == (8, 5)
    torch.manual_seed(0)
    backbone = build_backbone("mobilefacenet")
    stage1 = CATFaceStage1(backbone, faces.num_identities, feature_shape(backbone))
    rows = train(stage1, stream, TrainConfig(out=tmp_path / "one", steps=2, log_every=1, progress=False))
    assert all(math.isfinite(r["loss"]) for r in rows) and {"identity", "attributes", "sad"} <= set(rows[0])
    before = {k: v.clone() for k, v in stage1.state_dict().items()}
    for fusion in ("none", "catf"):
        stage2 = CATFaceStage2(stage1, faces.num_identities, feature_shape(backbone), fusion=fusion)
        rows = train(stage2, demo_stream()[0], TrainConfig(out=tmp_path / fusion, steps=1, log_every=1, progress=False))
        assert math.isfinite(rows[0]["loss"])
    assert all(torch.equal(v, before[k]) for k, v in stage1.state_dict().items())  # stage 1 stays frozen


@pytest.mark.parametrize("trainer, extra", [("btnet", []), ("lgaf", []), ("catface", ["--stage", "1"])])
def test_trainers_train_from_a_build_with_its_stored_attributes(tmp_path, trainer, extra):
    from click.testing import CliRunner

    from degrade.cli import main

    table = tmp_path / "attributes.csv"
    table.write_text("identity,Smiling,Male,Bald,Big Nose,Chubby,Narrow Eyes\n"  # more columns, another order
                     + "".join(f"demo_{i:05d},1,{i % 2},0,1,0,1\n" for i in range(100)))
    build = CliRunner().invoke(main, ["build", "--recipe", trainer, "--source", "demo", "--limit", "48", "--format", "raw",
                                      "--attributes", str(table), "--out", str(tmp_path / "pairs"), "--device", "cpu"])
    assert build.exit_code == 0, build.output
    result = CliRunner().invoke(main, ["train", trainer, *extra, "--from-dataset", str(tmp_path / "pairs"), "--steps", "2",
                                       "--batch-size", "16", "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert math.isfinite(float(result.output.split("loss ")[1].split()[0]))
    if trainer == "catface":
        assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["spec"]["columns"] == \
            ["Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"]


def test_lgaf_trains_on_streamed_pairs(tmp_path):
    stream, faces = demo_stream()
    backbone = build_backbone("mobilefacenet")
    model = LGAF(backbone, faces.num_identities, feature_shape(backbone), mode="lgf", heads=2)
    rows = train(model, stream, TrainConfig(out=tmp_path, steps=2, log_every=1, progress=False))
    assert all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("spec", [
    {"trainer": "lgaf", "mode": "lgf", "heads": 2, "head": "arcface"},
    {"trainer": "catface", "stage": 2, "columns": ["Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"], "fusion": "catf",
     "stage1_classes": 7},  # a stage 1 trained on other faces
])
def test_a_training_checkpoint_evaluates_as_the_model_it_trained(tmp_path, spec):
    from trainers.registry import build_trainer, load_trained

    stream, faces = demo_stream()
    spec = {**spec, "backbone": "mobilefacenet", "classes": faces.num_identities}
    trainer = build_trainer(spec)
    train(trainer, stream, TrainConfig(out=tmp_path, steps=2, log_every=1, progress=False))
    rebuilt = load_trained(tmp_path / "step-0000002.pt")
    images = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(rebuilt(images), trainer.eval().embedding(images), atol=1e-5)
    assert rebuilt(images).shape == (3, 512 if spec["trainer"] == "catface" else 128)


def _stage2(stage1, out, *options) -> list[str]:
    return ["train", "catface", "--stage", "2", "--stage1", str(stage1), "-b", "8", "-j", "0", "--device", "cpu",
            "--out", str(out), *options]


def test_catface_stage2_trains_on_its_stage1_model_whatever_its_backbone_and_faces(tmp_path, catface_stage1):
    """Stage 1 learnt 100 identities on IResNet-18; stage 2, with no --backbone, fuses its branches on 7 others."""
    from click.testing import CliRunner

    from degrade.cli import main
    from trainers.registry import load_trained

    result = CliRunner().invoke(main, _stage2(catface_stage1, tmp_path / "run", "--source", "demo:7", "--steps", "1"))
    assert result.exit_code == 0, result.output
    spec = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["spec"]
    assert (spec["backbone"], spec["stage1_classes"], spec["classes"]) == ("iresnet18", 100, 7)
    stage1 = torch.load(catface_stage1, weights_only=True)["trainer"]
    rebuilt = load_trained(tmp_path / "run" / "last.pt").trainer
    assert rebuilt.head.weight.shape[0] == 7
    assert all(torch.equal(value, stage1[name]) for name, value in rebuilt.stage1.state_dict().items())


def test_a_catface_stage1_run_saved_with_the_head_and_fusion_it_did_not_use_resumes(tmp_path, catface_stage1):
    """Its spec now holds neither; one saved before, with both, is taken for the same command's run (it
    ended at its last step: there is nothing left to train)."""
    import shutil

    from click.testing import CliRunner

    from degrade.cli import main

    saved = torch.load(catface_stage1, weights_only=True)
    assert not {"head", "fusion"} & set(saved["spec"])
    shutil.copytree(catface_stage1.parent, tmp_path / "stage1")
    torch.save({**saved, "spec": {**saved["spec"], "head": "arcface", "fusion": "catf"}}, tmp_path / "stage1" / "last.pt")
    result = CliRunner().invoke(main, ["train", "catface", "--attributes", str(catface_stage1.parent.parent / "attributes.csv"),
                                       "--backbone", "iresnet18", "--source", "demo", "--steps", "1", "-b", "8", "-j", "0",
                                       "--device", "cpu", "--out", str(tmp_path / "stage1")])
    assert result.exit_code == 0 and "nothing to train, the run is at step 1" in result.output, result.output


def test_a_catface_run_saved_with_the_head_it_did_not_use_resumes_and_evaluates(tmp_path, catface_stage1):
    """Runs saved before stage 2 kept its stage 1's classes recorded the --head option (unused) and no
    stage1_classes: the same command resumes such a run, and it evaluates."""
    from click.testing import CliRunner

    from degrade.cli import main
    from trainers.registry import load_trained

    command = _stage2(catface_stage1, tmp_path / "run", "--source", "demo", "--steps", "2")
    assert CliRunner().invoke(main, [*command, "--max-steps", "1"]).exit_code == 0
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    spec = {name: value for name, value in saved["spec"].items() if name != "stage1_classes"}
    torch.save({**saved, "spec": {**spec, "head": "arcface"}}, tmp_path / "run" / "last.pt")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 0 and "step 2: loss" in result.output, result.output
    assert load_trained(tmp_path / "run" / "last.pt").trainer.stage1.head.weight.shape[0] == 100
