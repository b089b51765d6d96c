"""An input to `degrade train` or `degrade eval` that cannot be used fails with one message naming
it and saying why: a checkpoint (--init, --teacher, --stage1, eval --model, the run's last.pt),
also one whose weights are NaN, a folder that is not a finished build (--from-dataset), a source
whose faces cannot be read, a build with a damaged face, an attributes table without the columns CATFace needs, folds the
pairs file does not have, an unknown backbone, a setting that would make training climb its loss
or never reach its learning rate."""

import fcntl
import os
import re
from types import SimpleNamespace

import click
import datasets
import pytest
import torch
from click.testing import CliRunner

from degrade.arrow import build_dataset
from degrade.cli import main
from degrade.recipe import load_recipe
from degrade.sources import open_source
from degrade.text import as_ranges
from trainers.backbones import build_backbone
from trainers.checkpoints import CheckpointError, backbone_state, load_backbone_weights, training_checkpoint
from trainers import evaluate
from trainers.cli import parse_folds, training_source

from .conftest import LFW, OpensAFile, damage_cell


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (path, what the message says about it)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "text.pt").write_text("garbage\n")
    torch.save([1, 2, 3], folder / "list.pt")
    torch.save(build_backbone("iresnet18").state_dict(), folder / "iresnet18.pt")
    diverged = build_backbone("mobilefacenet").state_dict()
    diverged["conv1.bn.running_mean"][3] = float("nan")
    torch.save({"backbone": diverged, "trainer": {f"backbone.{k}": v for k, v in diverged.items()}, "step": 7,
                "spec": {"trainer": "lrfr"}}, folder / "step-0000007.pt")  # as a run that diverged could leave one
    return {
        "empty": (str(folder / "empty.pt"), "not a PyTorch checkpoint (EOFError"),
        "text": (str(folder / "text.pt"), "not a PyTorch checkpoint (UnpicklingError: Unsupported operand 103)"),
        "list": (str(folder / "list.pt"), "holds no backbone weights (a list"),
        "other backbone": (str(folder / "iresnet18.pt"), "not weights of this MobileFaceNet: 283 of its tensors missing"),
        "diverged": (str(folder / "step-0000007.pt"), "NaN or inf in 1 tensor of its weights (e.g. '"),
    }


@pytest.mark.parametrize("kind", ["empty", "text", "list", "other backbone", "diverged"])
def test_backbone_weights_that_do_not_fit_are_refused_naming_the_file(bad_files, kind):
    path, says = bad_files[kind]
    with pytest.raises(CheckpointError) as error:
        load_backbone_weights(build_backbone("mobilefacenet"), path)
    assert str(error.value).startswith(f"{path}: ") and says in str(error.value)


def test_weights_of_another_shape_are_refused_naming_the_tensor(tmp_path):
    state = build_backbone("mobilefacenet").state_dict()
    state["conv1.conv.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "reshaped.pt")
    with pytest.raises(CheckpointError, match=r"reshaped.pt: not weights of this MobileFaceNet \(.*conv1.conv.weight"):
        load_backbone_weights(build_backbone("mobilefacenet"), tmp_path / "reshaped.pt")


def test_weights_under_a_usual_key_with_ddp_prefixes_load_exactly(tmp_path):
    source = build_backbone("mobilefacenet")
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    assert set(backbone_state(tmp_path / "ddp.pt")) == set(source.state_dict())
    target = build_backbone("mobilefacenet", tmp_path / "ddp.pt")
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_a_runs_last_checkpoint_gives_the_backbone_its_step_files_hold(tmp_path):
    """--init runs/x/last.pt and NAME=BACKBONE:last.pt were refused: 'holds no backbone weights'."""
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo:4", "--steps", "1", "-b", "4", "-j", "0",
                                       "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    last, step = backbone_state(tmp_path / "run" / "last.pt"), backbone_state(tmp_path / "run" / "step-0000001.pt")
    assert list(last) == list(step) == list(build_backbone("mobilefacenet").state_dict())
    assert all(torch.equal(last[name], step[name]) for name in step)


def test_a_run_whose_last_checkpoint_was_cut_short_since_says_what_to_do(tmp_path):
    """Was torch's paragraph on miniz errors, and no word of what to do."""
    command = ["train", "lrfr", "--source", "demo:4", "--steps", "2", "-b", "4", "-j", "0", "--device", "cpu",
               "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(main, [*command, "--max-steps", "1"]).exit_code == 0
    last = tmp_path / "run" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    result = CliRunner().invoke(main, command)
    _fails_naming(result, str(last), "not a PyTorch checkpoint (RuntimeError: PytorchStreamReader failed reading zip "
                                     "archive: failed finding central directory). A run writes it whole or not at all, "
                                     "so it was damaged since (a copy cut short?): put the run's last.pt back, or give "
                                     "this command a new --out")


def test_a_checkpoint_is_read_without_running_what_it_names(tmp_path):
    marker = tmp_path / "ran"
    state = build_backbone("mobilefacenet").state_dict()
    torch.save({"state_dict": state, "extra": OpensAFile(marker)}, tmp_path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights.pt: holds Python objects other than tensors .*\(io.open\)"):
        backbone_state(tmp_path / "weights.pt")
    assert not marker.exists()
    torch.save({"state_dict": state, "epoch": 3, "note": "plain values load"}, tmp_path / "plain.pt")
    assert set(backbone_state(tmp_path / "plain.pt")) == set(state)


def test_a_file_without_trainer_and_spec_is_not_a_training_checkpoint(bad_files):
    path, _ = bad_files["other backbone"]
    with pytest.raises(CheckpointError, match="not a degrade training checkpoint"):
        training_checkpoint(path)


def _fails_naming(result, path: str, says: str) -> None:
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    assert path in result.output and says in result.output


@pytest.mark.parametrize("kind", ["empty", "text", "other backbone", "diverged"])
def test_train_init_and_teacher_name_a_bad_checkpoint(tmp_path, bad_files, kind):
    path, says = bad_files[kind]
    for option in ("--init", "--teacher"):
        result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", option, path, "--steps", "1",
                                           "--device", "cpu", "--out", str(tmp_path / "run")])
        _fails_naming(result, path, says)
        teacher_says = "--teacher: the teacher's architecture is the student's (--backbone mobilefacenet); "
        assert (teacher_says in result.output) == (option == "--teacher"), result.output


def test_a_run_folder_whose_last_checkpoint_is_unreadable_is_not_resumed(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_text("junk\n")
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--steps", "1", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    _fails_naming(result, str(tmp_path / "run" / "last.pt"), "not a PyTorch checkpoint")
    assert (tmp_path / "run" / "last.pt").read_text() == "junk\n"


def test_a_run_folder_is_resumed_only_by_the_command_that_started_it(tmp_path):
    run = tmp_path / "run"
    command = ["train", "lrfr", "--source", "demo", "--steps", "3", "--max-steps", "2", "--batch-size", "8",
               "--device", "cpu", "--out", str(run)]
    assert CliRunner().invoke(main, command).exit_code == 0
    saved, started_by = (run / "last.pt").read_bytes(), (run / "command.json").read_text()

    other = CliRunner().invoke(main, [*command, "--backbone", "iresnet18", "--lr", "0.1"])
    _fails_naming(other, str(run / "last.pt"), "saved by a run of another command "
                  "(backbone mobilefacenet there, iresnet18 here; lr 0.01 there, 0.1 here)")
    assert (run / "last.pt").read_bytes() == saved and (run / "command.json").read_text() == started_by

    resumed = CliRunner().invoke(main, [*command, "--max-steps", "3", "--checkpoint-every", "7"])  # may change
    assert resumed.exit_code == 0 and "step 3: loss" in resumed.output, resumed.output
    finished = CliRunner().invoke(main, command[:6] + command[8:])  # without --max-steps
    assert finished.exit_code == 0 and f"{run}: nothing to train, the run is at step 3" in finished.output
    assert (run / "command.json").read_text() == started_by


def test_a_run_is_resumed_only_on_pairs_made_as_its_own_were(tmp_path):
    """Another recipe, an edited recipe, another source or a build's pairs instead of pairs made on
    the fly would change the data under a run without a word; each is refused, naming the change."""
    run = tmp_path / "run"
    command = ["train", "lrfr", "--steps", "3", "--max-steps", "1", "--batch-size", "8", "--device", "cpu",
               "-j", "0", "--out", str(run)]
    assert CliRunner().invoke(main, [*command, "--source", "demo:20"]).exit_code == 0
    saved = (run / "last.pt").read_bytes()
    edited = tmp_path / "maug.yaml"
    edited.write_text(load_recipe("maug").text.replace("seed: 0", "seed: 5"))
    build_dataset(load_recipe("maug"), open_source("demo:20", 112), tmp_path / "built", image_format="raw")
    for change, says in [(["--source", "demo:20", "--recipe", "catface"], "recipe maug there, catface here; the recipe's text"),
                         (["--source", "demo:20", "--recipe", str(edited)], "recipe_seed 0 there, 5 here; the recipe's text"),
                         (["--source", "demo:30"], "classes 20 there, 30 here; samples 200 there, 300 here"),
                         (["--from-dataset", str(tmp_path / "built")], "pairs made on the fly there, read from a build here")]:
        _fails_naming(CliRunner().invoke(main, [*command, *change]), str(run / "last.pt"),
                      f"saved by a run of another command ({says})")
    assert (run / "last.pt").read_bytes() == saved
    resumed = CliRunner().invoke(main, [*command, "--source", "demo:20", "--max-steps", "2", "--batch-size", "4"])
    assert resumed.exit_code == 0 and "step 2: loss" in resumed.output, resumed.output  # the batch size may change

    state = torch.load(run / "last.pt", weights_only=True)
    del state["data"]  # as runs saved it before they recorded their pairs: taken to be this command's
    torch.save(state, run / "last.pt")
    resumed = CliRunner().invoke(main, [*command, "--source", "demo:20", "--max-steps", "3", "--batch-size", "4"])
    assert resumed.exit_code == 0 and "step 3: loss" in resumed.output, resumed.output


def test_a_run_from_a_build_is_resumed_only_on_that_build_wherever_it_lies(tmp_path):
    """Another build of the same recipe and size (from other faces) would change the pairs under a
    run without a word; the same build moved elsewhere is the same run."""
    recipe = load_recipe("maug")
    build_dataset(recipe, open_source("demo:20", 112), tmp_path / "built", image_format="raw", progress=False)
    build_dataset(recipe, open_source(str(tmp_path / "built"), 112), tmp_path / "other", image_format="raw",
                  progress=False)
    run = tmp_path / "run"
    command = ["train", "lrfr", "--steps", "4", "-b", "8", "--device", "cpu", "-j", "0", "--out", str(run)]
    first = CliRunner().invoke(main, [*command, "--max-steps", "1", "--from-dataset", str(tmp_path / "built")])
    assert first.exit_code == 0, first.output
    saved = (run / "last.pt").read_bytes()
    other = CliRunner().invoke(main, [*command, "--max-steps", "2", "--from-dataset", str(tmp_path / "other")])
    _fails_naming(other, str(run / "last.pt"), "saved by a run of another command "
                  f"(build_source demo there, {tmp_path / 'built'} here)")
    on_the_fly = CliRunner().invoke(main, [*command, "--max-steps", "2", "--source", "demo:20"])
    _fails_naming(on_the_fly, str(run / "last.pt"), "another command (pairs read from a build there, made on the fly here)")
    assert (run / "last.pt").read_bytes() == saved
    (tmp_path / "built").rename(tmp_path / "moved")
    moved = CliRunner().invoke(main, [*command, "--max-steps", "2", "--from-dataset", str(tmp_path / "moved")])
    assert moved.exit_code == 0 and "step 2: loss" in moved.output, moved.output

    state = torch.load(run / "last.pt", weights_only=True)
    for field in ("build_source", "build_attributes_values"):  # as runs saved it before they recorded the build's
        del state["data"][field]
    torch.save(state, run / "last.pt")
    resumed = CliRunner().invoke(main, [*command, "--max-steps", "3", "--from-dataset", str(tmp_path / "other")])
    assert resumed.exit_code == 0 and "step 3: loss" in resumed.output, resumed.output


def test_a_catface_run_is_resumed_only_with_the_attributes_it_started_with(tmp_path):
    """Another table (or the same file edited) would change the labels under a run without a word;
    the same table moved elsewhere is the same run."""
    rows = [f"demo_{i:05d},{i % 2},0,1,0,{i % 3 == 0:d}\n" for i in range(20)]
    header = "identity,Male,Bald,Big Nose,Chubby,Narrow Eyes\n"
    (tmp_path / "attributes.csv").write_text(header + "".join(rows))
    (tmp_path / "moved.csv").write_text(header + "".join(rows))
    (tmp_path / "edited.csv").write_text(header + "".join(rows).replace(",1,0,1\n", ",1,1,1\n"))
    run = tmp_path / "run"
    command = ["train", "catface", "--source", "demo:20", "--steps", "3", "-b", "4",
               "--device", "cpu", "-j", "0", "--out", str(run)]
    first = CliRunner().invoke(main, [*command, "--max-steps", "1", "--attributes", str(tmp_path / "attributes.csv")])
    assert first.exit_code == 0, first.output
    saved = (run / "last.pt").read_bytes()
    edited = CliRunner().invoke(main, [*command, "--max-steps", "2", "--attributes", str(tmp_path / "edited.csv")])
    _fails_naming(edited, str(run / "last.pt"), "saved by a run of another command (the attributes' values)")
    assert (run / "last.pt").read_bytes() == saved
    moved = CliRunner().invoke(main, [*command, "--max-steps", "2", "--attributes", str(tmp_path / "moved.csv")])
    assert moved.exit_code == 0 and "step 2: loss" in moved.output, moved.output

    state = torch.load(run / "last.pt", weights_only=True)
    del state["data"]["attributes_values"]  # as runs saved it before they recorded their attributes: taken to be these
    torch.save(state, run / "last.pt")
    resumed = CliRunner().invoke(main, [*command, "--max-steps", "3", "--attributes", str(tmp_path / "edited.csv")])
    assert resumed.exit_code == 0 and "step 3: loss" in resumed.output, resumed.output


def test_a_run_is_not_started_among_other_files_but_is_where_a_run_stopped_before_its_first_checkpoint(tmp_path):
    """--out given a build's folder by mistake: the run wrote its checkpoints among the shards."""
    build_dataset(load_recipe("maug"), open_source("demo:2", 112), tmp_path / "built", image_format="raw",
                  progress=False)
    before = sorted(path.name for path in (tmp_path / "built").iterdir())
    command = ["train", "lrfr", "--source", "demo:2", "--steps", "1", "-b", "4", "--device", "cpu", "-j", "0", "--out"]
    result = CliRunner().invoke(main, [*command, str(tmp_path / "built")])
    _fails_naming(result, str(tmp_path / "built"), "holds files that are not a training run's (data-00000-of-00001.arrow")
    assert sorted(path.name for path in (tmp_path / "built").iterdir()) == before
    stopped = tmp_path / "stopped"
    (stopped / "tensorboard").mkdir(parents=True)
    for name in ("command.json", "log.csv", "last.pt.partial"):
        (stopped / name).write_text("")
    result = CliRunner().invoke(main, [*command, str(stopped)])
    assert result.exit_code == 0 and "step 1: loss" in result.output, result.output


def test_a_run_folder_another_run_trains_in_is_left_alone(tmp_path):
    """A job started twice: both runs saved to last.pt.partial, each emptying it under the other,
    and renamed the mixture to last.pt. The second now stops before it writes anything."""
    run = tmp_path / "run"
    command = ["train", "lrfr", "--source", "demo:20", "--steps", "2", "--max-steps", "1", "--batch-size", "8",
               "--device", "cpu", "-j", "0", "--out", str(run)]
    run.mkdir()
    first_run = os.open(run, os.O_RDONLY)
    try:
        fcntl.flock(first_run, fcntl.LOCK_EX)  # as the writing rank of a run training there holds it
        second = CliRunner().invoke(main, command)
        _fails_naming(second, str(run), "another `degrade train` is running in this folder now")
        assert list(run.iterdir()) == []
    finally:
        os.close(first_run)
    assert CliRunner().invoke(main, command).exit_code == 0
    assert {path.name for path in run.iterdir()} >= {"command.json", "last.pt", "log.csv", "step-0000001.pt"}


def test_a_last_checkpoint_whose_optimizer_trained_other_parameters_is_not_resumed(tmp_path):
    """As a run of an earlier version, which trained the backbone's own embedding under CATFace, would be."""
    run = tmp_path / "run"
    command = ["train", "lrfr", "--source", "demo", "--steps", "3", "--max-steps", "1", "--batch-size", "8",
               "--device", "cpu", "-j", "0", "--out", str(run)]
    assert CliRunner().invoke(main, command).exit_code == 0
    state = torch.load(run / "last.pt", weights_only=True)
    state["optimizer"]["param_groups"][0]["params"].append(10_000)
    torch.save(state, run / "last.pt")
    _fails_naming(CliRunner().invoke(main, command), str(run / "last.pt"),
                  "its optimizer does not fit this run's trainable parameters")


def test_catface_stage1_names_a_bad_checkpoint(tmp_path, bad_files):
    for kind in ("empty", "list"):
        path, _ = bad_files[kind]
        result = CliRunner().invoke(main, ["train", "catface", "--stage", "2", "--stage1", path, "--source", "demo",
                                           "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "run")])
        _fails_naming(result, path, "not a PyTorch checkpoint" if kind == "empty" else "not a degrade training checkpoint")


@pytest.mark.parametrize("kind", ["empty", "text", "other backbone", "diverged"])
def test_eval_names_a_bad_checkpoint_given_as_weights_or_as_a_run_and_leaves_no_output_folder(
        tmp_path, bad_files, small_pairs, kind):
    path, says = bad_files[kind]
    for model in (f"x=mobilefacenet:{path}", f"x={path}"):
        result = CliRunner().invoke(main, ["eval", "--model", model, "--pairs", str(small_pairs), "--device", "cpu",
                                           "--out", str(tmp_path / "eval")])
        _fails_naming(result, path, says if model.startswith("x=mobilefacenet") or kind != "other backbone"
                      else "not a degrade training checkpoint")
        assert not (tmp_path / "eval").exists()


def test_from_dataset_of_a_folder_that_is_not_a_degrade_build_names_it(tmp_path):
    (tmp_path / "empty").mkdir()
    datasets.Dataset.from_dict({"a": [1, 2]}).save_to_disk(str(tmp_path / "other"))
    for folder, says in (("empty", "not a dataset folder (no state.json)"), ("other", "not a degrade build (no degrade.json)")):
        for trainer in ("lrfr", "catface"):
            result = CliRunner().invoke(main, ["train", trainer, "--from-dataset", str(tmp_path / folder), "--steps", "1",
                                               "--device", "cpu", "--out", str(tmp_path / "run")])
            _fails_naming(result, str(tmp_path / folder), says)


def test_from_dataset_of_a_build_with_a_damaged_face_stops_at_its_batch_naming_its_shard_and_key(tmp_path):
    build_dataset(load_recipe("maug"), open_source("demo"), tmp_path / "ds", limit=16, progress=False)
    damage_cell(tmp_path / "ds" / "data-00000-of-00001.arrow", "lq", row=3)
    result = CliRunner().invoke(main, ["train", "lrfr", "--from-dataset", str(tmp_path / "ds"), "--steps", "2",
                                       "--batch-size", "8", "-j", "0", "--device", "cpu", "--out", str(tmp_path / "run")])
    _fails_naming(result, str(tmp_path / "ds" / "data-00000-of-00001.arrow"),
                  "the lq face of key 3 is not a readable 112x112 RGB image (PNG)")


@pytest.mark.parametrize("columns, says", [
    ("Smiling", "no column 'Male' (has Smiling)"),
    ("male\tSmiling", "no column 'Male'; did you mean 'male'? (has male, Smiling)"),
])
def test_catface_attributes_without_its_columns_name_the_first_missing_one(tmp_path, columns, says):
    (tmp_path / "attributes.tsv").write_text(f"file\t{columns}\nbob/0.jpg" + "\t1" * (columns.count("\t") + 1) + "\n")
    result = CliRunner().invoke(main, ["train", "catface", "--attributes", str(tmp_path / "attributes.tsv"), "--steps", "1",
                                       "--device", "cpu", "--out", str(tmp_path / "run")])
    _fails_naming(result, "attributes.tsv", says)


def test_training_on_faces_that_cannot_be_read_fails_naming_one(tmp_path, unreadable_faces):
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", str(unreadable_faces), "--steps", "2", "-b", "2",
                                       "--device", "cpu", "-j", "0", "--out", str(tmp_path / "run")])
    _fails_naming(result, str(unreadable_faces / "ann" / "1.jpg"), "every one of the 2 faces of a batch was skipped")
    assert not (tmp_path / "run" / "last.pt").exists()


@pytest.mark.parametrize("options, says", [
    (["--model", "x=mobilefacenet:"], "no weights file after 'mobilefacenet:' in 'x=mobilefacenet:'"),
    (["--model", "x=mobilefacenet", "--model", "x=iresnet18"], "two models are named 'x'; give each a NAME of its own"),
    (["--model", "mobilefacenet"], "expected NAME=BACKBONE[:WEIGHTS]"),
    (["--model", "x=mobilefacenet", "--selection", "floor"], "--selection would have no effect: no --model is a BTNet"),
])
def test_eval_models_that_are_not_one_named_model_each_are_refused_before_any_work(tmp_path, small_pairs, options, says):
    result = CliRunner().invoke(main, ["eval", *options, "--pairs", str(small_pairs), "--device", "cpu",
                                       "--out", str(tmp_path / "eval")])
    _fails_naming(result, "--model", says)
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("options, names, says", [
    (["--seed", "3"], "--seed", "--seed would have no effect: it seeds the probes' --recipe, which is not given"),
    (["--recipe", "btnet"], "--recipe", "recipe 'btnet' makes native-size LQ faces; probes are degraded at the 112 px"),
    (["--recipe", "nope"], "nope", "unknown recipe 'nope'"),
])
def test_eval_probe_recipes_that_cannot_be_used_are_refused_before_any_work(tmp_path, small_pairs, options, names, says):
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", *options, "--pairs", str(small_pairs),
                                       "--device", "cpu", "--out", str(tmp_path / "eval")])
    _fails_naming(result, names, says)
    assert not (tmp_path / "eval").exists()


def test_eval_stopped_during_its_work_leaves_no_empty_output_folder(tmp_path, small_pairs, monkeypatch):
    """Ctrl-C ended it with click's 'Aborted!' and exit code 1, leaving the --out folder it had made, empty."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate, "evaluate_pairs", interrupted)
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                                       "--resolutions", "112", "--device", "cpu", "--out", str(tmp_path / "new")])
    assert result.exit_code == 130 and "eval interrupted: no results written" in result.output
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays, as does anything in it
    CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                              "--resolutions", "112", "--device", "cpu", "--out", str(tmp_path / "kept")])
    assert (tmp_path / "kept").is_dir()


def test_eval_on_pairs_whose_images_are_missing_fails_naming_one_and_their_folds(tmp_path, lfw_source):
    (tmp_path / "images").symlink_to(LFW / "images")
    (tmp_path / "pairs.txt").write_text("2\t1\nAaron_Peirsol\t1\t2\nAaron_Peirsol\t1\tNobody\t1\n"
                                        "Aaron_Peirsol\t3\t4\nAaron_Peirsol\t1\tNobody\t2\n")
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(tmp_path / "pairs.txt"),
                                       "--device", "cpu"])
    _fails_naming(result, str(tmp_path / "images" / "Nobody" / "Nobody_0001.jpg"),
                  "2 images of its pairs could not be read, in folds 1, 2 (")
    assert "--folds" not in result.output  # no two folds are whole


def test_eval_on_ten_folds_beside_the_images_of_eight_names_the_folds_that_can_be_evaluated(tmp_path, lfw_source):
    """The official LFW pairs.txt beside ../shared's images, which leave out folds 9 and 10."""
    (tmp_path / "images").symlink_to(LFW / "images")
    whole = "Aaron_Peirsol\t1\t2\nAaron_Peirsol\t1\tAkhmed_Zakayev\t1\n"
    (tmp_path / "pairs.txt").write_text("4\t1\n" + whole * 2 + "Nobody\t1\t2\nNobody\t1\tAaron_Peirsol\t1\n"
                                        + whole)
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(tmp_path / "pairs.txt"),
                                       "--device", "cpu"])
    _fails_naming(result, str(tmp_path / "images" / "Nobody" / "Nobody_0001.jpg"),
                  "2 images of its pairs could not be read, in fold 3 (")
    assert result.output.rstrip().endswith("every image of the other folds is there: --folds 1,2,4 evaluates them")


@pytest.mark.parametrize("folds, error", [("3", "has folds 1-2; got '3'"), ("1,3", "has folds 1-2; got '1,3'"),
                                          ("0,1", "has folds 1-2; got '0,1'"), ("seven", "numbers like 7,8"),
                                          ("1,,2", "numbers like 7,8 or 1-8, got '1,,2'"),
                                          ("2", "k-fold accuracy needs two or more folds; got '2'")])
def test_eval_folds_outside_the_protocol_or_a_single_fold_are_refused(small_pairs, folds, error):
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                                       "--folds", folds, "--device", "cpu"])
    _fails_naming(result, "--folds", error)


@pytest.mark.parametrize("folds, chosen", [("1-8", [1, 2, 3, 4, 5, 6, 7, 8]), ("7,8", [7, 8]), (" 2-4 , 9", [2, 3, 4, 9]),
                                           ("8,1-2,2", [1, 2, 8]), ("5-5", [5])])
def test_folds_are_named_by_numbers_and_ranges(folds, chosen):
    assert parse_folds(folds, SimpleNamespace(folds=10), "pairs.txt", "--folds") == chosen


@pytest.mark.parametrize("folds, written", [([1, 2, 3, 4, 5, 6, 7, 8], "1-8"), ([1, 2, 4], "1,2,4"),
                                            ([1, 3, 4, 5, 9], "1,3-5,9")])
def test_the_folds_evals_hint_names_are_written_as_folds_reads_them(folds, written):
    assert as_ranges(folds) == written
    assert parse_folds(written, SimpleNamespace(folds=10), "pairs.txt", "--folds") == folds


@pytest.mark.parametrize("folds, error", [("8-1", "expected numbers like 7,8 or 1-8, got '8-1'"),
                                          ("1-", "expected numbers like 7,8 or 1-8, got '1-'"),
                                          ("1-11", "pairs.txt has folds 1-10; got '1-11'"),
                                          ("1-8000000000", "pairs.txt has folds 1-10; got '1-8000000000'")])
def test_fold_ranges_that_are_backwards_open_or_too_long_are_refused(folds, error):
    with pytest.raises(click.BadParameter, match=re.escape(error)):
        parse_folds(folds, SimpleNamespace(folds=10), "pairs.txt", "--folds")


@pytest.mark.parametrize("resolutions, error", [("14,200", "200 px is above the 112 px of the faces of"),
                                                ("0,14", "expected positive sides, got '0,14'"),
                                                ("7,,14", "expected numbers like 7,14,28, got '7,,14'")])
def test_eval_resolutions_that_are_not_sides_of_the_faces_are_refused_naming_the_option(small_pairs, resolutions, error):
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                                       "--resolutions", resolutions, "--device", "cpu"])
    _fails_naming(result, "--resolutions", error)


def test_bench_train_names_an_unknown_backbone():
    result = CliRunner().invoke(main, ["bench", "--train", "resnet9000", "--recipe", "maug", "--device", "cpu"])
    _fails_naming(result, "resnet9000", "use one of iresnet100, iresnet18, iresnet50, mobilefacenet")


def test_an_output_folder_that_cannot_be_made_is_named_before_any_work(tmp_path, small_pairs):
    (tmp_path / "file").write_text("")
    out = str(tmp_path / "file" / "run")
    trained = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--steps", "1", "--device", "cpu", "--out", out])
    evaluated = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs),
                                          "--device", "cpu", "--out", out])
    for result in (trained, evaluated):
        _fails_naming(result, out, "Not a directory")
        assert "verification" not in result.output


def test_identification_on_a_folder_without_probes_is_refused_before_verifying(tmp_path, small_pairs):
    face = small_pairs.parent / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    for identity in ("ann", "bob"):
        (tmp_path / "gallery" / identity).mkdir(parents=True)
        (tmp_path / "gallery" / identity / "0.jpg").write_bytes(face.read_bytes())
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs), "--device", "cpu",
                                       "--identification", str(tmp_path / "gallery")])
    _fails_naming(result, str(tmp_path / "gallery"), "identification needs identities with two or more images")
    assert "verification" not in result.output


def test_identification_on_faces_without_identities_is_refused_before_verifying(tmp_path, small_pairs, lfw_source):
    """A .bin's faces are all of identity -1: taken as one person, every probe was right at rank 1."""
    from degrade.sources.pairs import write_bin

    write_bin(tmp_path / "set.bin", [lfw_source.read(key)[0] for key in range(4)], [True, False])
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs), "--device", "cpu",
                                       "--identification", str(tmp_path / "set.bin")])
    _fails_naming(result, str(tmp_path / "set.bin"), "identification needs faces labelled by identity; these have none")
    assert "x: verification" not in result.output


def test_identification_on_a_folder_with_an_unreadable_image_fails_naming_it_before_verifying(tmp_path, small_pairs):
    """Ranked without it, the others would measure another gallery, and no one would know."""
    face = small_pairs.parent / "images" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"
    for identity in ("ann", "bob"):
        (tmp_path / "gallery" / identity).mkdir(parents=True)
        for n in range(2):
            (tmp_path / "gallery" / identity / f"{n}.jpg").write_bytes(face.read_bytes())
    (tmp_path / "gallery" / "bob" / "2.jpg").write_bytes(face.read_bytes()[:100])
    result = CliRunner().invoke(main, ["eval", "--model", "x=mobilefacenet", "--pairs", str(small_pairs), "--device", "cpu",
                                       "--identification", str(tmp_path / "gallery")])
    _fails_naming(result, str(tmp_path / "gallery" / "bob" / "2.jpg"),
                  "1 image of its gallery and probes could not be read")
    assert "verification" not in result.output


def test_training_on_a_verification_bin_or_a_build_of_one_is_refused_saying_its_faces_have_no_identities(
        tmp_path, lfw_source):
    """A .bin holds pairs, not people: its faces are of identity -1, which counted as one identity."""
    from degrade.sources.pairs import write_bin

    write_bin(tmp_path / "set.bin", [lfw_source.read(key)[0] for key in range(8)], [True, False, True, False])
    build_dataset(load_recipe("maug"), open_source(str(tmp_path / "set.bin")), tmp_path / "built", progress=False)
    for given in (["--source", str(tmp_path / "set.bin")], ["--from-dataset", str(tmp_path / "built")]):
        result = CliRunner().invoke(main, ["train", "lrfr", *given, "--steps", "1", "-b", "2", "-j", "0",
                                           "--device", "cpu", "--out", str(tmp_path / "run")])
        _fails_naming(result, given[1], "its faces have no identity labels (as a .bin verification set's")
        assert not (tmp_path / "run").exists()
    inspected = CliRunner().invoke(main, ["inspect", str(tmp_path / "built")])
    assert inspected.output.startswith(f"{tmp_path / 'built'}: 8 pairs, no identity labels, 1 shard")


def test_training_on_faces_of_one_identity_is_refused_before_any_work(tmp_path, lfw_source):
    (tmp_path / "faces" / "ann").mkdir(parents=True)
    for key in range(2):
        (tmp_path / "faces" / "ann" / f"{key}.jpg").write_bytes(lfw_source.read(key)[0])
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", str(tmp_path / "faces"), "--steps", "1", "-b", "2",
                                       "-j", "0", "--device", "cpu", "--out", str(tmp_path / "run")])
    _fails_naming(result, str(tmp_path / "faces"), "faces of one identity; a recognition head learns to tell identities "
                                                   "apart, so training needs two or more")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("trainer, recipe, says", [
    ("btnet", "maug", "recipe 'maug' makes LQ faces at the input size; btnet trains on native-size LQ faces"),
    ("lrfr", "btnet", "recipe 'btnet' makes native-size LQ faces (no up-sampling); lrfr trains on LQ faces at the input size"),
    ("lgaf", "btnet", "lgaf trains on LQ faces at the input size (e.g. the lgaf recipe)"),
])
def test_a_recipe_whose_lq_size_the_trainer_cannot_take_is_refused_before_training(tmp_path, trainer, recipe, says):
    result = CliRunner().invoke(main, ["train", trainer, "--recipe", recipe, "--steps", "1", "-b", "8", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    _fails_naming(result, recipe, says)
    assert not (tmp_path / "run").exists()


def test_faces_of_another_size_than_the_backbones_take_are_refused_made_on_the_fly_or_read_from_a_build(tmp_path):
    (tmp_path / "small.yaml").write_text("name: small\nsize: 64\nstages:\n  - {op: resize, sides: [8, 16]}\n")
    build_dataset(load_recipe(str(tmp_path / "small.yaml")), open_source("demo", 64), tmp_path / "ds", limit=16,
                  progress=False)
    for source, subject in ((["--recipe", str(tmp_path / "small.yaml")], "recipe"),
                            (["--from-dataset", str(tmp_path / "ds")], f"{tmp_path / 'ds'}: its recipe")):
        result = CliRunner().invoke(main, ["train", "lgaf", *source, "--steps", "1", "-b", "8", "--device", "cpu",
                                           "--out", str(tmp_path / "run")])
        _fails_naming(result, subject, "'small' makes faces of 64 px; the backbones lgaf trains take 112x112 faces")
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["bench", "--train", "iresnet18", "--recipe", str(tmp_path / "small.yaml"),
                                       "--device", "cpu"])
    assert result.exit_code == 2 and "'small' makes faces of 64 px; the backbones take 112x112 faces" in result.output


@pytest.mark.parametrize("trainer, arguments, says", [
    ("lrfr", ["--lr", "-0.1"], "'--lr': -0.1 is not in the range x>0"),
    ("lrfr", ["--weight-decay", "-1"], "'--weight-decay': -1.0 is not in the range x>=0"),
    ("lrfr", ["--contrast-weight", "-2"], "'--contrast-weight': -2.0 is not in the range x>=0"),
    ("lrfr", ["--warmup", "20", "--steps", "20"], "20 warm-up steps leave none of the 20 --steps at the full learning rate"),
    ("lgaf", ["--frozen-backbone-steps", "30", "--steps", "20"],
     "30 frozen-backbone steps leave none of the 20 --steps training the backbone"),
    ("btnet", ["--loss-weights", "1,-1,0"], "expected three numbers >= 0, not all 0, like 1,1,1; got '1,-1,0'"),
    ("btnet", ["--loss-weights", "0,0,0"], "expected three numbers >= 0, not all 0"),
    ("lrfr", ["--seed", "9223372036854775807"], "'--seed': 9223372036854775807 is not in the range 0<=x<=4294967295"),
])
def test_training_settings_that_would_ascend_the_loss_or_never_reach_the_learning_rate_are_refused(tmp_path, trainer,
                                                                                                   arguments, says):
    result = CliRunner().invoke(main, ["train", trainer, *arguments, "--max-steps", "1", "-b", "8", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and says in result.output
    assert not (tmp_path / "run").exists()


def pair_identity_names(pairs_file, fold: int) -> set[str]:
    """The identity names in ``fold`` (from 1) of an LFW-style pairs file of 2 x 15 pairs a fold."""
    lines = [line.split("\t") for line in pairs_file.read_text().splitlines()[1:]]
    chosen = lines[30 * (fold - 1):30 * fold]
    return {fields[0] for fields in chosen} | {fields[2] for fields in chosen if len(fields) == 4}


@pytest.mark.parametrize("folds, excluded_folds", [("1", [1]), (None, [1, 2])])
def test_training_leaves_out_the_identities_of_the_excluded_folds_by_default_all(lfw_source, small_pairs, folds,
                                                                                excluded_folds):
    faces = training_source(str(LFW / "images"), 112, str(small_pairs), folds)
    names = {faces.identity_name(int(i)) for i in faces.identities.unique()}
    excluded = set().union(*(pair_identity_names(small_pairs, fold) for fold in excluded_folds))
    assert not names & excluded and len(excluded) > 20
    everyone = {lfw_source.identity_name(int(i)) for i in lfw_source.identities.unique()}
    assert names == everyone - excluded
    assert torch.equal(faces.identities.unique(), torch.arange(len(names)))  # class labels 0..C-1
    assert faces.name == f"{lfw_source.name} ({len(faces):,} of its {len(lfw_source):,} samples)"
    assert training_source(str(LFW / "images"), 112, None, None).name == lfw_source.name


def test_exclude_pairs_that_cannot_name_identities_is_refused(tmp_path, lfw_source):
    """A table of faces is no protocol (it crashed on its missing folds), and a .bin names no identities
    (it left out nothing, saying only that no name matched)."""
    from degrade.sources.pairs import write_bin

    write_bin(tmp_path / "set.bin", [lfw_source.read(key)[0] for key in range(4)], [True, False])
    datasets.Dataset.from_dict({"image": [{"bytes": lfw_source.read(0)[0], "path": None}], "label": [0]},
                               features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
                               ).to_parquet(str(tmp_path / "faces.parquet"))
    for given, says in [("faces.parquet", "not a pairs protocol (an LFW-style pairs.txt)"),
                        ("set.bin", "its faces have no identity names (as a .bin verification set's), so it cannot say")]:
        result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--exclude-pairs", str(tmp_path / given),
                                           "--steps", "1", "-b", "8", "--device", "cpu", "--out", str(tmp_path / "run")])
        assert result.exit_code == 2 and f"Invalid value for --exclude-pairs: {tmp_path / given}: {says}" in result.output
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, says", [
    (["--from-dataset", "BUILD", "--exclude-pairs", "PAIRS"], "--exclude-pairs would have no effect: --from-dataset reads"),
    (["--from-dataset", "BUILD", "--recipe", "maug_111", "--source", "demo"], "--source, --recipe would have no effect"),
    (["--exclude-folds", "7,8"], "--exclude-folds names folds of --exclude-pairs, which is not given"),
    (["--exclude-pairs", "PAIRS", "--exclude-folds", "3"], "PAIRS has folds 1-2; got '3'"),
    (["lgaf", "--mode", "global", "--heads", "8"], "--heads would have no effect: --mode global uses no MHMS heads"),
    (["--hq-only", "--p", "1"], "--contrast-weight, --p and --teacher would have no effect: --hq-only trains on HQ"),
    (["--contrast-weight", "0", "--p", "1"], "--p would have no effect: --contrast-weight 0 turns L_LogExp off"),
    (["catface", "--attributes", "ATTRIBUTES", "--fusion", "add"], "--stage1 and --fusion are for stage 2"),
    (["catface", "--attributes", "ATTRIBUTES", "--head", "cosface"], "No such option '--head'"),  # AdaFace, the paper's
    (["btnet", "--head", "cosface"], "No such option '--head'"),  # its classifier holds the trunk's class centres
    (["btnet", "--frozen-backbone-steps", "1"], "No such option '--frozen-backbone-steps'"),  # it trains only that
])
def test_training_options_that_would_have_no_effect_are_refused(tmp_path, small_pairs, arguments, says):
    """The trainer is lrfr unless the arguments start with another one's name."""
    named = {"PAIRS": str(small_pairs), "BUILD": str(tmp_path), "ATTRIBUTES": str(LFW / "attributes.tsv")}
    arguments = [named.get(a, a) for a in arguments]
    trainer = arguments.pop(0) if arguments[0] in ("lgaf", "catface", "btnet") else "lrfr"
    result = CliRunner().invoke(main, ["train", trainer, *arguments, "--steps", "2", "-b", "8", "--device", "cpu",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and says.replace("PAIRS", str(small_pairs)) in result.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("arguments, says", [
    (["--backbone", "mobilefacenet"], "mobilefacenet: the stage-1 model of STAGE1 is built on iresnet18, and stage 2"),
    (["--init", "STAGE1"], "--init would have no effect in stage 2: the stage-1 model's weights replace it"),
    (["--frozen-backbone-steps", "1"], "--frozen-backbone-steps would have no effect in stage 2"),
    (["--stage1", "STAGE2"], "STAGE2 is not a CATFace stage-1 checkpoint (its run trained catface stage 2)"),
])
def test_catface_stage2_options_its_stage1_model_decides_are_refused(tmp_path, catface_stage1, arguments, says):
    stage2 = torch.load(catface_stage1, weights_only=True)
    torch.save({**stage2, "spec": {**stage2["spec"], "stage": 2}}, tmp_path / "stage2.pt")
    named = {"STAGE1": str(catface_stage1), "STAGE2": str(tmp_path / "stage2.pt")}
    result = CliRunner().invoke(main, ["train", "catface", "--stage", "2", "--stage1", str(catface_stage1),
                                       *[named.get(a, a) for a in arguments], "--steps", "2", "-b", "8",
                                       "--device", "cpu", "--out", str(tmp_path / "run")])
    _fails_naming(result, "", says.replace("STAGE1", named["STAGE1"]).replace("STAGE2", named["STAGE2"]))
    assert not (tmp_path / "run").exists()


def test_excluded_folds_that_leave_no_face_to_train_on_are_refused_saying_so(small_pairs):
    """It said 'training on 0 faces', then 'no full batch of 8 from 0 samples; use a smaller batch size'."""
    with pytest.raises(click.BadParameter, match=re.escape(
            f"{small_pairs}: every face of {small_pairs} is of an identity in its folds 1,2, so none is left to train on")):
        training_source(str(small_pairs), 112, str(small_pairs), None)


def test_training_says_how_many_faces_the_excluded_folds_left_out_even_none(tmp_path, small_pairs):
    result = CliRunner().invoke(main, ["train", "lrfr", "--source", "demo", "--exclude-pairs", str(small_pairs),
                                       "--max-steps", "1", "-b", "8", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert ("training on 1,000 faces of 100 identities; --exclude-pairs left out 0 faces (no identity name of the "
            "source is in those folds)") in result.output
