"""Trainer core: heads, losses and the k-fold protocol against hand-computed values; the teacher
loads exactly and verifies LFW; a CPU smoke run learns and resumes as the same run."""

import errno
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from degrade.cli import main
from degrade.distributed import join_torchrun
from degrade.ops.resize import Resize
from degrade.recipe import load_recipe, parse_recipe
from degrade.sources import open_source
from degrade.sources.subset import SubsetSource
from degrade.stream import PairStream
from trainers.backbones import build_backbone
from trainers.checkpoints import backbone_state
from trainers.evaluate import (ProbeRecipe, embed, evaluate_pairs, faces_per_pass, identification, identification_faces,
                               kfold_accuracy, probe, roc_auc, tar_at_far, verification_faces, verification_metrics)
from trainers.heads import AdaFace, ArcFace, CosFace
from trainers.losses import log_exp_contrast
from trainers import loop
from trainers.loop import CheckpointNotSaved, DataClock, TrainConfig, learning_rate_factor, train
from trainers.lrfr import LRFR
from trainers.registry import build_trainer

from .conftest import SHARED_DATA, TEACHER


def two_class_head(head_class, **options):
    head = head_class(2, 2, **options)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    return head


def at_angle(angle: float, norm: float = 3.0) -> torch.Tensor:
    return norm * torch.tensor([[math.cos(angle), math.sin(angle)]])


# ---- heads ----------------------------------------------------------------------------------


def test_arcface_adds_the_angular_margin_to_the_own_class_only():
    logits = two_class_head(ArcFace)(at_angle(0.6), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(0.6 + 0.5), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(64 * math.sin(0.6), abs=1e-4)


def test_arcface_past_pi_falls_back_to_a_monotonic_logit():
    logits = two_class_head(ArcFace)(at_angle(3.0), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(64 * (math.cos(3.0) - math.sin(math.pi - 0.5) * 0.5), abs=1e-3)


def test_cosface_subtracts_the_margin_from_the_own_cosine():
    logits = two_class_head(CosFace)(at_angle(0.6), torch.tensor([1]))
    assert logits[0, 1].item() == pytest.approx(64 * (math.sin(0.6) - 0.35), abs=1e-4)
    assert logits[0, 0].item() == pytest.approx(64 * math.cos(0.6), abs=1e-4)


@pytest.mark.parametrize("norm, r", [(10.0, -1.0), (20.0, 0.0), (30.0, 1.0)])
def test_adaface_margin_follows_the_feature_norm(norm, r):
    head = two_class_head(AdaFace).eval()
    head.norm_mean.fill_(20.0)
    head.norm_std.fill_(3.33 - 1e-3)  # so that (norm - 20) / (std + eps) * 0.333 = (norm - 20) / 10
    theta = 0.9
    logit = head(at_angle(theta, norm), torch.tensor([0]))[0, 0].item() / 64
    assert logit == pytest.approx(math.cos(theta - 0.4 * r) - (0.4 + 0.4 * r), abs=1e-3)


def test_adaface_low_norm_is_arcface_and_middle_norm_is_cosface():
    head = two_class_head(AdaFace).eval()
    head.norm_mean.fill_(20.0)
    head.norm_std.fill_(1.0)
    low = head(at_angle(0.7, 1.0), torch.tensor([0]))[0, 0].item() / 64
    middle = head(at_angle(0.7, 20.0), torch.tensor([0]))[0, 0].item() / 64
    assert low == pytest.approx(math.cos(0.7 + 0.4), abs=1e-4)
    assert middle == pytest.approx(math.cos(0.7) - 0.4, abs=1e-4)


def test_adaface_keeps_norm_statistics_by_moving_average():
    head = AdaFace(2, 2).train()
    embeddings = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
    head(embeddings, torch.tensor([0, 1]))
    assert head.norm_mean.item() == pytest.approx(0.99 * 20 + 0.01 * 40)
    assert head.norm_std.item() == pytest.approx(0.99 * 100 + 0.01 * 0.0)


# ---- L_LogExp -------------------------------------------------------------------------------


@pytest.mark.parametrize("head", [ArcFace, CosFace, AdaFace])
def test_heads_compute_float32_logits_under_bf16_autocast(head):
    torch.manual_seed(0)
    model, embeddings, labels = head(16, 5), torch.randn(6, 16), torch.tensor([0, 1, 2, 3, 4, 0])
    plain = model(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(embeddings.bfloat16(), labels)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, plain, atol=0.5)  # bf16 input rounding only, on logits of scale 64


def test_log_exp_value_and_gradient_p1():
    x = torch.tensor([[0.0, 0.0]], requires_grad=True)
    y = torch.tensor([[1.0, 2.0]])
    loss = log_exp_contrast(x, y, p=1)
    assert loss.item() == pytest.approx(0.5 * math.log(math.e + math.e ** 2 - 1))
    loss.backward()
    total = math.e + math.e ** 2 - 1
    assert x.grad[0].tolist() == pytest.approx([-0.5 * math.e / total, -0.5 * math.e ** 2 / total])


def test_log_exp_value_and_gradient_p2():
    x = torch.tensor([[0.5, -1.0]], requires_grad=True)
    y = torch.zeros(1, 2)
    loss = log_exp_contrast(x, y, p=2)
    inside = math.exp(0.25) + math.exp(1.0) - 1
    assert loss.item() == pytest.approx(math.log(inside) / 4)
    loss.backward()
    assert x.grad[0].tolist() == pytest.approx([math.exp(0.25) * 2 * 0.5 / (4 * inside),
                                                math.exp(1.0) * 2 * -1.0 / (4 * inside)])


def test_log_exp_keeps_its_value_and_gradient_where_the_exponential_overflows_float32():
    """A coordinate 12 apart: e^(12²) is 1e62, past float32; the loss is still log(e^144 + e − 1) / 6."""
    x = torch.tensor([[12.0, 1.0, 0.0]], requires_grad=True)
    loss = log_exp_contrast(x, torch.zeros(1, 3), p=2)
    inside = math.exp(144) + math.exp(1) - 1
    assert loss.item() == pytest.approx(math.log(inside) / 6)
    loss.backward()
    assert x.grad[0].tolist() == pytest.approx([math.exp(144) * 24 / (6 * inside), 0.0, 0.0], abs=1e-6)


def test_log_exp_is_zero_for_equal_embeddings_and_averages_over_the_batch():
    y = torch.randn(4, 16)
    assert log_exp_contrast(y, y).item() == 0
    x = y + 0.1
    assert log_exp_contrast(x, y).item() == pytest.approx(log_exp_contrast(x[:1], y[:1]).item())


# ---- protocol -------------------------------------------------------------------------------


def synthetic_scores():
    """10 folds of 10 same (score 0.8) and 10 different pairs (0.2), one different pair per fold at 0.9."""
    same = torch.tensor(([True] * 10 + [False] * 10) * 10)
    scores = torch.where(same, 0.8, 0.2)
    fold = torch.arange(200) // 20
    scores[torch.arange(10) * 20 + 10] = 0.9
    return scores, same, fold


def test_kfold_accuracy_has_the_known_answer():
    scores, same, fold = synthetic_scores()
    mean, std = kfold_accuracy(scores, same, fold)
    assert mean == pytest.approx(0.95, abs=1e-6) and std == pytest.approx(0.0, abs=1e-6)


def test_tar_at_far_and_auc_have_the_known_answers():
    scores, same, _ = synthetic_scores()
    assert tar_at_far(scores, same, 0.01) == 0.0   # the ten 0.9 negatives must stay rejected
    assert tar_at_far(scores, same, 0.1) == 1.0
    assert roc_auc(scores, same) == pytest.approx(0.9)


def test_tar_is_reported_only_at_the_fars_the_different_pairs_can_resolve():
    scores, same, fold = synthetic_scores()  # 100 different pairs: 1e-2 is one of them, 1e-3 a tenth of one
    metrics = verification_metrics(scores, same, fold)
    assert metrics["different_pairs"] == 100 and metrics["tar@far=0.01"] == 0.0 and "tar@far=0.001" not in metrics


def test_the_accuracy_plot_draws_each_models_two_modes_in_its_own_colour(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from trainers.evaluate import plot_accuracy

    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)  # keeps the figure to look at
    result = {"accuracy": 0.9}
    runs = {name: {"same": {"14": result, "112": result}, "cross": {"14": result, "112": result}} for name in "abc"}
    plot_accuracy(runs, tmp_path / "accuracy.png")
    lines = drawn[0].axes[0].get_lines()
    assert [line.get_label() for line in lines] == [f"{name} ({mode})" for name in "abc" for mode in ("same", "cross")]
    colours = [line.get_color() for line in lines]
    assert colours[0::2] == colours[1::2] and len(set(colours)) == 3
    assert [line.get_linestyle() for line in lines[:2]] == ["-", "--"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0


def test_probe_resolution_is_the_engines_resize(faces):
    assert torch.equal(probe(faces[:4], 14), Resize(sides=[14]).apply(faces[:4], {"side": torch.full((4,), 14)}))
    assert torch.equal(probe(faces[:4], 112), faces[:4])


def test_probes_degraded_by_a_recipe_of_a_14_px_resize_score_as_the_14_px_probes_do(small_pairs, lfw_source):
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet")
    reduce_to_14 = ProbeRecipe(parse_recipe({"name": "to14", "stages": [{"op": "resize", "sides": [14]}]}), seed=0)
    pairs = verification_faces(open_source(str(small_pairs)))
    plain, degraded = evaluate_pairs(model, pairs, [14]), evaluate_pairs(model, pairs, [112], degraded_by=reduce_to_14)
    assert degraded["same"]["112"] == plain["same"]["14"] and degraded["cross"]["112"] == plain["cross"]["14"]
    keys = torch.nonzero(torch.isin(lfw_source.identities, torch.tensor([1, 5, 9]))).squeeze(1)
    chosen = identification_faces(lfw_source, keys)
    assert (identification(model, chosen, [112], degraded_by=reduce_to_14)["112"]
            == identification(model, chosen, [14])["14"])


def test_probes_degraded_by_a_random_recipe_are_the_same_for_every_model_and_every_run(small_pairs):
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet")
    pairs = verification_faces(open_source(str(small_pairs)))
    catface = ProbeRecipe(load_recipe("catface"), seed=0)
    first = evaluate_pairs(model, pairs, [20, 112], degraded_by=catface)
    assert evaluate_pairs(model, pairs, [20, 112], degraded_by=catface) == first
    clean = evaluate_pairs(model, pairs, [112])
    assert first["cross"]["112"]["auc"] != clean["cross"]["112"]["auc"]  # the recipe ran on the 112 px probes
    other_seed = evaluate_pairs(model, pairs, [112], degraded_by=ProbeRecipe(load_recipe("catface"), seed=1))
    assert other_seed["cross"]["112"]["auc"] != first["cross"]["112"]["auc"]


def test_eval_records_and_prints_the_recipe_its_probes_were_degraded_by(tmp_path, small_pairs):
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs), "--resolutions",
                                       "112", "--recipe", "lgaf", "--seed", "5", "--device", "cpu", "--out",
                                       str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "probes: recipe lgaf (seed 5), then each resolution" in result.output
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["x"]["probe_recipe"] == {"recipe": "lgaf",
                                                                                                "seed": 5}


def test_eval_reads_each_face_once_however_many_models_it_scores(tmp_path, small_pairs, monkeypatch):
    """Each model scored on the same decoded faces: five models used to decode the gallery and the
    pairs' faces five times each."""
    from degrade.sources.base import EncodedSource

    for identity in ("Aaron_Eckhart", "Aaron_Guiel"):
        (tmp_path / "gallery" / identity).mkdir(parents=True)
        for n in range(2):
            (tmp_path / "gallery" / identity / f"{n}.jpg").symlink_to(small_pairs.parent / "images" / "Aaron_Eckhart"
                                                                      / "Aaron_Eckhart_0001.jpg")
    loaded = []
    load = EncodedSource.load
    monkeypatch.setattr(EncodedSource, "load", lambda source, keys, out=None: loaded.append(len(keys)) or load(source, keys, out))
    result = CliRunner().invoke(main, ["eval", "--model", "a=mobilefacenet", "--model", "b=mobilefacenet", "--pairs",
                                       str(small_pairs), "--resolutions", "14", "--device", "cpu",
                                       "--identification", str(tmp_path / "gallery")])
    assert result.exit_code == 0, result.output
    pairs = open_source(str(small_pairs)).pairs
    assert sorted(loaded) == [4, len(torch.cat([pairs.left, pairs.right]).unique())]
    assert result.output.count("rank-1 identification") == 2


def test_an_untrained_backbone_scores_the_same_on_every_run(tmp_path, small_pairs):
    def scores(run: str) -> dict:
        result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                                           "--resolutions", "112", "--device", "cpu", "--out", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
        assert "x: an untrained mobilefacenet (no weights given; x=mobilefacenet:WEIGHTS loads them)" in result.output
        return json.loads((tmp_path / run / "results.json").read_text())["x"]["same"]

    assert scores("a") == scores("b")


def test_embed_gives_each_face_its_normalised_flip_concatenation_whatever_the_passes():
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet").eval()
    images = torch.rand(2 * faces_per_pass("cpu") + 1, 3, 112, 112)  # three passes, the last of one face
    with torch.no_grad():
        whole = torch.cat([model(images), model(images.flip(-1))], dim=1)
    embeddings = embed(model, images)
    assert embeddings.shape == (len(images), 256)
    assert torch.allclose(embeddings, torch.nn.functional.normalize(whole, dim=1), atol=1e-5)


def test_learning_rate_schedules():
    config = TrainConfig(out=".", steps=100, warmup_steps=10, schedule="cosine")
    assert learning_rate_factor(0, config) == pytest.approx(0.1)
    assert learning_rate_factor(10, config) == pytest.approx(1.0)
    assert learning_rate_factor(55, config) == pytest.approx(0.5)
    step = TrainConfig(out=".", steps=100, schedule="step", milestones=(0.5, 0.75))
    assert [learning_rate_factor(s, step) for s in (10, 60, 90)] == pytest.approx([1.0, 0.1, 0.01])


def test_data_clock_reports_the_share_of_step_time_spent_fetching(monkeypatch):
    ticks = iter([0.0, 1.0, 4.0, 5.0, 8.0,      # step 1 fetches 0-1, step 2 fetches 4-5, count at 8
                  10.0, 13.0, 14.0])            # step 3 fetches 10-13, count at 14
    monkeypatch.setattr("trainers.loop.time.perf_counter", lambda: next(ticks))
    clock = DataClock(torch.device("cpu"))
    for _ in range(2):
        clock.fetching()
        clock.fetched()
    assert clock.data_fraction() == pytest.approx(2 / 8)
    clock.fetching()
    clock.fetched()
    assert clock.data_fraction() == pytest.approx(3 / 4)


# ---- teacher --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    if not TEACHER.is_file():
        pytest.skip(f"pretrained MobileFaceNet not found at {TEACHER}")
    return build_backbone("mobilefacenet", TEACHER)


def test_teacher_state_dict_matches_the_module_exactly(teacher):
    stored = backbone_state(TEACHER)
    assert set(stored) == set(teacher.state_dict())
    assert len(stored) == 333
    assert all(stored[k].shape == v.shape for k, v in teacher.state_dict().items())


def test_teacher_verifies_lfw_at_98_5_percent(teacher, lfw_source):
    protocol = open_source(str(SHARED_DATA / "lfw112" / "pairs.txt"))
    results = evaluate_pairs(teacher, verification_faces(protocol), [112])
    assert len(protocol.pairs.same) == 4800
    assert results["same"]["112"]["accuracy"] >= 0.985


def test_teacher_identifies_lfw_faces_well_at_112_px_and_near_chance_at_7(teacher, lfw_source):
    images_per_identity = torch.bincount(lfw_source.identities)
    chosen = torch.nonzero(images_per_identity >= 8).squeeze(1)[:12]  # 12 identities, 209 faces
    keys = torch.nonzero(torch.isin(lfw_source.identities, chosen)).squeeze(1)
    results = identification(teacher, identification_faces(lfw_source, keys), [112, 14, 7])
    rank1 = {side: results[side]["rank1"] for side in results}
    assert rank1["112"] >= 0.95
    assert rank1["112"] - 0.2 > rank1["14"] > rank1["7"] + 0.2
    assert rank1["7"] < 0.25  # chance is 1 / 12
    assert all(results[side]["rank5"] >= rank1[side] for side in results)
    assert results["7"]["rank5"] < 0.7 < results["14"]["rank5"]
    assert results["112"]["gallery"] == 12
    of_three = keys[torch.isin(lfw_source.identities[keys], chosen[:3])]
    three = identification(teacher, identification_faces(lfw_source, of_three), [112])
    assert three["112"]["gallery"] == 3 and "rank5" not in three["112"]  # every probe is within rank 5 of 3


# ---- smoke training -------------------------------------------------------------------------


def smoke_stream():
    demo = open_source("demo")
    faces = SubsetSource(demo, torch.arange(40))  # 4 identities x 10 images
    return PairStream.from_source(load_recipe("maug"), faces, batch_size=8), faces.num_identities


def smoke_trainer(classes: int) -> LRFR:
    torch.manual_seed(0)
    return LRFR(build_backbone("mobilefacenet"), classes, head="arcface", p=2.0)


def test_smoke_training_learns_and_resumes_as_the_same_run(tmp_path):
    stream, classes = smoke_stream()
    config = dict(steps=16, lr=0.05, log_every=1, checkpoint_every=8, progress=False)
    straight = smoke_trainer(classes)
    rows = train(straight, stream, TrainConfig(out=tmp_path / "straight", **config))
    first, last = sum(r["loss"] for r in rows[:4]) / 4, sum(r["loss"] for r in rows[-4:]) / 4
    assert last < 0.8 * first

    stream, _ = smoke_stream()
    train(smoke_trainer(classes), stream, TrainConfig(out=tmp_path / "split", max_steps=8, **config))
    resumed = smoke_trainer(classes)
    later_rows = train(resumed, smoke_stream()[0], TrainConfig(out=tmp_path / "split", **config))
    assert [r["step"] for r in later_rows] == list(range(9, 17))
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_an_fp16_run_skips_the_steps_its_scaler_overflows_on_without_a_warning_about_its_schedule(tmp_path):
    stream, classes = smoke_stream()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(smoke_trainer(classes), stream, TrainConfig(out=tmp_path, steps=2, precision="fp16", progress=False))
    scaler = torch.load(tmp_path / "last.pt", weights_only=False)["scaler"]
    assert scaler["scale"] < 2.0 ** 16  # the first steps overflowed at the initial scale and were skipped
    assert [str(w.message) for w in caught if "lr_scheduler" in str(w.message)] == []


def test_a_checkpoint_that_cannot_be_written_ends_the_run_naming_it_and_the_step_the_run_keeps(tmp_path, monkeypatch):
    """A full disk ended a run with torch's 'unexpected pos 3131136 vs 3131024' and a traceback."""
    real_save, saves = torch.save, []

    def second_step_on_a_full_disk(state, file):
        saves.append(state["step"])
        if state["step"] < 2:
            return real_save(state, file)
        file.write(b"PK")
        try:  # as torch reports it: its own error, the OSError of the file as its context
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    stream, classes = smoke_stream()
    monkeypatch.setattr(torch, "save", second_step_on_a_full_disk)
    with pytest.raises(CheckpointNotSaved, match=re.escape(
            f"{tmp_path / 'last.pt'}: No space left on device; step 2 could not be saved, {tmp_path / 'last.pt'} still "
            "holds step 1: free some space and run the same command again to resume")):
        train(smoke_trainer(classes), stream, TrainConfig(out=tmp_path, steps=3, checkpoint_every=1, progress=False))
    assert sorted(path.name for path in tmp_path.glob("*.pt*")) == ["last.pt", "step-0000001.pt"]  # no .partial left
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 1
    monkeypatch.setattr(torch, "save", real_save)
    rows = train(smoke_trainer(classes), smoke_stream()[0], TrainConfig(out=tmp_path, steps=3, checkpoint_every=1,
                                                                       log_every=1, progress=False))
    assert [row["step"] for row in rows] == [2, 3]


def test_the_same_training_command_trains_the_same_weights_and_another_seed_other_ones(tmp_path):
    """--seed seeds the weights that start untrained (here every one: no --init) as well as the
    epochs' order, so running a command again repeats its run step by step."""
    def weights_after_one_step(run: str, *seed: str) -> dict[str, torch.Tensor]:
        result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--steps", "1", "-b", "4", "--device",
                                           "cpu", "-j", "0", "--out", str(tmp_path / run), *seed])
        assert result.exit_code == 0, result.output
        return torch.load(tmp_path / run / "step-0000001.pt", weights_only=True)["trainer"]

    first, again, other = weights_after_one_step("a"), weights_after_one_step("b"), weights_after_one_step("c", "--seed", "1")
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not torch.equal(first["head.weight"], other["head.weight"])


@pytest.mark.parametrize("to_whom", ["job", "main process"])
def test_a_run_stopped_by_sigterm_saves_a_checkpoint_after_its_step_and_says_where_it_resumes(tmp_path, to_whom):
    """SIGTERM (Slurm's preemption, to every process of the job; `kill`, to the main process):
    the run ends after the step under way with a checkpoint there, exit 143 with one line, and
    the decoding workers, which hold its stderr, gone with it."""
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "degrade", "train", "lrfr", "--source", "demo", "--steps", "400",
                                "--checkpoint-every", "1000", "-b", "8", "--device", "cpu", "-j", "2", "--out", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while not (out / "log.csv").exists() and time.time() < deadline:  # its first row comes at step 10
        time.sleep(0.05)
    if to_whom == "job":
        os.killpg(process.pid, signal.SIGTERM)
    else:
        process.send_signal(signal.SIGTERM)
    errors = process.communicate(timeout=60)[1]
    saved = [int(path.stem.removeprefix("step-")) for path in out.glob("step-*.pt")]
    assert process.returncode == 143 and len(saved) == 1 and 10 <= saved[0] < 400, errors
    assert torch.load(out / "last.pt", weights_only=True)["step"] == saved[0]
    assert errors.replace("\r", "\n").rstrip().splitlines()[-1] == (
        f"{out}: terminated; run the same command again to resume from its last checkpoint, step {saved[0]}")


def _votes_of_rank(rank: int, store: str, asked: list[bool], answers) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=len(asked))
    vote = loop._StopVote(len(asked))
    answers.put((rank, [vote.any_asked(asked_now) for asked_now in asked[rank]]))
    torch.distributed.destroy_process_group()


def test_ranks_stop_after_the_same_step_when_any_one_of_them_is_asked(tmp_path):
    asked = [[False, False, True], [False, True, False]]  # rank 1 gets the SIGTERM a step before rank 0
    context = torch.multiprocessing.get_context("spawn")
    answers = context.Queue()
    ranks = [context.Process(target=_votes_of_rank, args=(rank, str(tmp_path / "store"), asked, answers)) for rank in (0, 1)]
    for process in ranks:
        process.start()
    results = dict(answers.get(timeout=120) for _ in ranks)
    for process in ranks:
        process.join(timeout=30)
    assert results == {0: [False, True, True], 1: [False, True, True]}


def _stream_of_a_torchrun_rank(rank: int, port: int, out: str, answers) -> None:
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    place = join_torchrun()
    maug, demo = load_recipe("maug"), open_source("demo")
    stream = PairStream.from_source(maug, demo, batch_size=8)
    made_for_one_rank = PairStream.from_source(maug, demo, batch_size=8, rank=0, world_size=1)
    with pytest.raises(ValueError) as refused:
        train(torch.nn.Linear(1, 1), made_for_one_rank, TrainConfig(out=Path(out), steps=1, progress=False))
    answers.put((rank, place, stream.rank_batches()[0].tolist(), str(refused.value)))


def test_each_torchrun_rank_streams_its_own_batches_and_training_refuses_a_stream_made_for_another_job(tmp_path):
    """`degrade train` made its stream before joining the process group, so under torchrun every
    rank took itself for the only one and trained on the same batches as the others."""
    context = torch.multiprocessing.get_context("spawn")
    answers = context.Queue()
    with socket.socket() as probe:  # a free port for rank 0's store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ranks = [context.Process(target=_stream_of_a_torchrun_rank, args=(rank, port, str(tmp_path), answers))
             for rank in (0, 1)]
    for process in ranks:
        process.start()
    results = {rank: rest for rank, *rest in (answers.get(timeout=120) for _ in ranks)}
    for process in ranks:
        process.join(timeout=30)
    assert [results[rank][0] for rank in (0, 1)] == [(0, 2), (1, 2)]
    first, second = results[0][1], results[1][1]
    assert len(first) == len(second) == 8 and not set(first) & set(second)
    assert "the stream gives batches for 1 rank(s), the job has 2" in results[0][2]
    assert [process.exitcode for process in ranks] == [0, 0]


def test_frozen_backbone_steps_train_only_the_head(tmp_path):
    stream, classes = smoke_stream()
    trainer = smoke_trainer(classes)
    backbone_before = {k: v.clone() for k, v in trainer.backbone.state_dict().items()}
    head_before = trainer.head.weight.detach().clone()
    train(trainer, stream, TrainConfig(out=tmp_path, steps=2, lr=0.05, frozen_backbone_steps=2, progress=False))
    assert all(torch.equal(v, backbone_before[k]) for k, v in trainer.backbone.state_dict().items())
    assert not torch.equal(trainer.head.weight.detach(), head_before)


class DivergesAtItsThirdStep(torch.nn.Module):
    """A trainer of one weight whose third loss is NaN, as a learning rate far too high makes it."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = torch.nn.Linear(1, 1)
        self.steps_taken = 0

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        self.steps_taken += 1
        loss = self.backbone.weight.sum() ** 2 * (math.nan if self.steps_taken == 3 else 1.0)
        return loss, {}


def test_a_run_whose_weights_go_nan_ends_at_its_next_check_and_keeps_its_last_sound_checkpoint(tmp_path):
    """NaN after step 3; step 4 is the next one saved, where the run ends instead, saving nothing."""
    config = TrainConfig(out=tmp_path, steps=8, lr=0.05, checkpoint_every=2, log_every=4, progress=False)
    with pytest.raises(loop.TrainingDiverged, match=f"step 4: .* {re.escape(str(tmp_path))}/last.pt still holds step 2"):
        train(DivergesAtItsThirdStep(), smoke_stream()[0], config)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["step"] == 2 and torch.isfinite(saved["trainer"]["backbone.weight"]).all()
    assert sorted(path.name for path in tmp_path.glob("step-*.pt")) == ["step-0000002.pt"]


def test_a_rank_that_does_not_write_checkpoints_names_the_one_its_writer_saved_when_the_run_diverges(tmp_path):
    trainer = DivergesAtItsThirdStep()
    optimizer = torch.optim.SGD(trainer.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    checkpoints = loop._Checkpoints(tmp_path, trainer, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False),
                                    TrainConfig(out=tmp_path, steps=8), data={}, writes=False)
    checkpoints.save(4, 32)
    with torch.no_grad():
        trainer.backbone.bias.fill_(math.inf)
    with pytest.raises(loop.TrainingDiverged, match="step 5: .*last.pt still holds step 4"):
        checkpoints.refuse_diverged(5)
    assert list(tmp_path.iterdir()) == []


def test_degrade_train_with_a_learning_rate_far_too_high_fails_with_one_line_and_saves_nothing(tmp_path):
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--lr", "1e4", "--steps", "10", "-b", "4",
                                       "--device", "cpu", "-j", "0", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1].startswith("Error: step 10: the model's weights are no longer finite")
    assert "no checkpoint was saved" in result.output and not list(tmp_path.glob("*.pt"))


BASE_SPEC = {"backbone": "mobilefacenet", "classes": 4}


@pytest.mark.parametrize("spec", [
    {"trainer": "lrfr", "use_lq": True, "contrast_weight": 0.5, "p": 2.0, "teacher": True, "head": "arcface"},
    *({"trainer": "lgaf", "mode": mode, "heads": 4, "head": "arcface"} for mode in ("local", "global", "concat", "lgf")),
    {"trainer": "catface", "stage": 1, "columns": ["Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"]},
    *({"trainer": "catface", "stage": 2, "columns": ["Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes"],
       "fusion": fusion, "stage1_classes": 6} for fusion in ("none", "concat", "add", "catf")),
    {"trainer": "btnet", "sides": [7, 14, 28, 56], "selection": "ceil", "blocks": 1, "loss_weights": [1, 1, 1]},
], ids=lambda spec: "-".join(str(spec[k]) for k in ("trainer", "mode", "stage", "fusion") if k in spec))
def test_one_step_of_every_trainer_reaches_each_of_its_trainable_parameters(spec):
    """DDP requires it of every rank's step: CATFace stage 1 and LGAF's local mode left the
    backbone's own embedding layers without a gradient, and failed under torchrun at the second step."""
    torch.manual_seed(0)
    trainer = build_trainer({**BASE_SPEC, **spec}).train()
    batch = {"hq": torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8),
             "lq": torch.randint(0, 256, (4, 3, 112, 112), dtype=torch.uint8), "identity": torch.arange(4),
             "attributes": torch.tensor([[1.0, 0.0, 1.0, 0.0, 1.0]] * 4), "lq_side": torch.tensor([7, 14, 28, 56])}
    loss, _ = trainer(batch)
    loss.backward()
    missed = [name for name, p in trainer.named_parameters() if p.requires_grad and p.grad is None]
    assert missed == [] and any(p.requires_grad for p in trainer.parameters())
