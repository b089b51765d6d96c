"""The command line as a user runs it: recipes, preview, build (and its resume), clear errors."""

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import cv2
import datasets
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from degrade import cli
from degrade.cli import main
from degrade.engine import make_pairs
from degrade.recipe import builtin_recipes, load_recipe
from degrade.sources.demo import DemoSource
from degrade.text import counted, every


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def decode(image: dict) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(image["bytes"], np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]


def test_help_explains_every_command():
    result = subprocess.run([sys.executable, "-m", "degrade", "--help"], capture_output=True, text=True, check=True)
    for command in ("build", "preview", "recipes", "train", "eval"):
        assert command in result.stdout
    assert "--recipe" in run("build", "--help").output


def test_every_option_of_every_command_says_what_it_does():
    context = click.Context(main)

    def commands(group: click.Group, path: str):
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            if isinstance(command, click.Group):
                yield from commands(command, f"{path} {name}")
            else:
                yield f"{path} {name}", command

    unexplained = [f"{path} {param.opts[0]}" for path, command in commands(main, "degrade") for param in command.params
                   if isinstance(param, click.Option) and not param.help]
    assert unexplained == []


def test_help_answers_without_importing_torch():
    script = ("import sys; from degrade.cli import main; main(['--help'], standalone_mode=False); "
              "main(['build', '--help'], standalone_mode=False); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "False"


def test_the_trainers_one_line_help_in_degrade_help_is_their_own():
    from degrade.cli import _Commands

    listing = run("--help").output
    for name, (module, attribute, short_help) in _Commands.lazy.items():
        command = getattr(importlib.import_module(module), attribute)
        assert command.get_short_help_str(200) == short_help
        assert f"{name}  " in listing and short_help[:40] in listing


def test_recipes_lists_each_builtin_recipe_with_its_description_in_one_column():
    lines = run("recipes").output.splitlines()
    assert len(lines) == len(builtin_recipes())
    for name in builtin_recipes():
        line = next(line for line in lines if line.startswith(name + " "))
        assert line.index(load_recipe(name).description) == max(map(len, builtin_recipes())) + 2


def test_recipes_with_a_name_prints_its_yaml_which_loads_back_as_the_same_recipe(tmp_path):
    (tmp_path / "mine.yaml").write_text(run("recipes", "catface").output)
    mine, builtin = load_recipe(tmp_path / "mine.yaml"), load_recipe("catface")
    faces = DemoSource(identities=1).load(torch.arange(8)).hq.float() / 255
    assert mine.text == builtin.text and torch.equal(mine(faces, torch.arange(8))[0], builtin(faces, torch.arange(8))[0])
    result = CliRunner().invoke(main, ["recipes", "nope"])
    assert result.exit_code == 1 and "unknown recipe 'nope' (built-in recipes: btnet" in result.output


def build(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "ds"
    result = run("build", "--recipe", "maug", "--limit", "40", "--batch-size", "16", "--shard-size", "16",
                 "--device", "cpu", "--out", str(out), *extra)
    assert result.exit_code == 0, result.output
    return out


def test_counts_in_messages_take_the_number_of_their_noun():
    assert [counted(1, "shard"), counted(3, "shard"), counted(0, "pair"), counted(1_000, "pair")] == [
        "1 shard", "3 shards", "0 pairs", "1,000 pairs"]
    assert [counted(1, "identity", "identities"), counted(2, "identity", "identities")] == ["1 identity", "2 identities"]
    assert [every(1, "input"), every(1_200, "input")] == ["the only input", "every one of the 1,200 inputs"]


def test_build_writes_a_dataset_whose_lq_is_the_engines_output(tmp_path):
    out = build(tmp_path)
    dataset = datasets.load_from_disk(str(out)).with_format(None)
    assert len(dataset) == 40
    assert {"key", "identity", "identity_name", "file", "hq", "lq", "params"} <= set(dataset.column_names)
    assert sorted(p.name for p in out.glob("data-*.arrow")) == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    rows = dataset.cast_column("hq", datasets.Image(decode=False)).cast_column("lq", datasets.Image(decode=False))
    keys = torch.tensor([0, 17, 39])
    expected = make_pairs(load_recipe("maug"), DemoSource(), keys)
    for n, key in enumerate(keys.tolist()):
        row = rows[key]
        assert row["key"] == key and row["identity"] == key // 10
        assert np.array_equal(decode(row["lq"]), expected.lq[n].permute(1, 2, 0).numpy())
        assert np.array_equal(decode(row["hq"]), expected.hq[n].permute(1, 2, 0).numpy())
        assert row["params"]["resize"]["side"] == int(expected.params["resize.side"][n])


def test_an_interrupted_build_resumes_to_identical_bytes(tmp_path):
    out = build(tmp_path)
    finished = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "state.json").unlink()
    (out / "data-00001-of-00003.arrow").unlink()
    (out / "data-00002-of-00003.arrow").write_bytes(b"")
    (out / "data-00002-of-00003.arrow").rename(out / "data-00002-of-00003.arrow.partial")
    with pytest.raises(FileNotFoundError):
        datasets.load_from_disk(str(out))
    result = run("build", "--recipe", "maug", "--limit", "40", "--batch-size", "16", "--shard-size", "16",
                 "--device", "cpu", "--out", str(out))
    assert "(1 already done)" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.endswith(".partial")} == finished


def test_a_different_build_into_the_same_folder_is_refused_saying_what_differs(tmp_path):
    out = build(tmp_path)
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--limit", "41", "--seed", "3", "--out", str(out)])
    differences = "pairs 40 there, 41 here; seed 0 there, 3 here; shard_size 16 there, 2048 here"
    assert result.exit_code == 1
    assert result.output == f"Error: {out}: holds a different build ({differences}); use a new --out or delete it\n"


def test_a_build_is_resumed_only_with_the_attributes_it_began_with(tmp_path):
    """An attributes file edited between an interrupted build and its resume would label the rest of
    the pairs by another table (a build records the file's path too, as it records its source's)."""
    command = ["build", "--recipe", "maug", "--limit", "40", "--shard-size", "16", "--device", "cpu", "-j", "0",
               "--out", str(tmp_path / "out"), "--attributes"]
    (tmp_path / "a.csv").write_text("identity,Male\ndemo_00000,1\ndemo_00003,0\n")  # keys 0-9 and 30-39
    assert CliRunner().invoke(main, [*command, str(tmp_path / "a.csv")]).exit_code == 0
    (tmp_path / "out" / "state.json").unlink()
    (tmp_path / "out" / "data-00002-of-00003.arrow").unlink()
    (tmp_path / "a.csv").write_text("identity,Male\ndemo_00000,1\ndemo_00003,1\n")
    edited = CliRunner().invoke(main, [*command, str(tmp_path / "a.csv")])
    assert edited.exit_code == 1 and edited.output == (f"Error: {tmp_path / 'out'}: holds a different build (the "
                                                       "attributes' values); use a new --out or delete it\n")
    (tmp_path / "a.csv").write_text("identity,Male\ndemo_00000,1\ndemo_00003,0\n")
    assert CliRunner().invoke(main, [*command, str(tmp_path / "a.csv")]).exit_code == 0
    assert datasets.load_from_disk(str(tmp_path / "out"))["attributes"][39] == {"Male": 0.0}


def test_a_relative_source_is_recorded_by_its_absolute_path_so_another_folders_faces_are_not_resumed(
        tmp_path, monkeypatch):
    for place, value in (("a", 40), ("b", 200)):
        for identity in ("ann", "bob"):
            (tmp_path / place / "faces" / identity).mkdir(parents=True)
            cv2.imwrite(str(tmp_path / place / "faces" / identity / "0.png"), np.full((112, 112, 3), value, np.uint8))
    out = tmp_path / "out"
    command = ["build", "--recipe", "maug", "--source", "faces", "--device", "cpu", "-j", "0", "--out", str(out)]
    monkeypatch.chdir(tmp_path / "a")
    assert run(*command).exit_code == 0
    monkeypatch.chdir(tmp_path / "b")
    result = run(*command)
    assert result.exit_code == 1
    assert f"source {tmp_path / 'a' / 'faces'} there, {tmp_path / 'b' / 'faces'} here" in result.output
    monkeypatch.chdir(tmp_path)
    assert run(*command[:4], "a/../a/faces", *command[5:]).exit_code == 0  # the same folder, written otherwise


def test_btnet_build_stores_native_size_lq(tmp_path):
    out = tmp_path / "bt"
    assert run("build", "--recipe", "btnet", "--limit", "24", "--out", str(out), "--device", "cpu").exit_code == 0
    dataset = datasets.load_from_disk(str(out))
    for row in dataset:
        side = row["params"]["resize"]["side"]
        assert row["lq"].size == (side, side) and row["hq"].size == (112, 112)


def test_preview_writes_a_grid_of_pairs(tmp_path):
    out = tmp_path / "grid.png"
    result = run("preview", "--recipe", "lgaf", "--count", "6", "--out", str(out), "--device", "cpu")
    assert result.exit_code == 0, result.output
    grid = cv2.imread(str(out))
    assert grid.shape[0] > 2 * 224 and grid.shape[1] == 4 * (2 * 224 + 8)
    assert grid.std() > 20


def test_a_long_label_wraps_at_its_spaces_keeping_every_param_whole():
    from degrade.preview import text_width, wrapped

    line = "anisotropic_blur sigma_x=2.7 sigma_y=1.3 angle=180 kernel_size=19"  # 66 characters
    lines = wrapped(line, text_width("anisotropic_blur sigma_x=2.7 sigma_y=1.3"))
    assert lines == ["anisotropic_blur sigma_x=2.7 sigma_y=1.3", "  angle=180 kernel_size=19"]
    assert wrapped(line, text_width(line)) == [line]
    assert wrapped("a verylongword", text_width("a")) == ["a", "  verylongword"]  # a word alone, however wide


@pytest.mark.parametrize("size", [17, 112])
def test_preview_labels_stay_inside_their_own_cells(tmp_path, size):
    """Faces of 17 px make cells narrower than an op's name: the cells widen to their words."""
    from degrade.preview import COLUMNS, MARGIN, ZOOM

    recipe = tmp_path / "long.yaml"
    recipe.write_text(f"name: long\nsize: {size}\nstages:\n  - {{op: anisotropic_blur, kernel_size: [9, 9]}}\n"
                      "  - {op: illumination}\n  - {op: jpeg}\n")
    out = tmp_path / "grid.png"
    assert run("preview", "--recipe", str(recipe), "--count", "8", "--out", str(out), "--device", "cpu").exit_code == 0
    grid = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    cell_w = grid.shape[1] // COLUMNS
    labels = grid[size * ZOOM:grid.shape[0] // 2]  # the first row of cells' text
    assert labels.min() < 100  # there is text
    for column in range(COLUMNS):
        assert (labels[:, (column + 1) * cell_w - MARGIN:(column + 1) * cell_w] == 255).all()  # nothing at the cell's edge


@pytest.mark.parametrize("command", [["preview", "--device", "cpu", "--out"], ["inspect", ".", "--grid"]],
                         ids=lambda command: command[0])
def test_a_grid_path_that_is_not_a_png_is_refused_before_any_work(tmp_path, command):
    result = CliRunner().invoke(main, [*command, str(tmp_path / "grid.jpg")])
    assert result.exit_code == 2 and "the grid is written as PNG" in result.output
    assert "give a path ending in .png, got" in result.output and not (tmp_path / "grid.jpg").exists()


@pytest.mark.parametrize("command", [["preview", "--device", "cpu", "--out"], ["inspect", ".", "--grid"]],
                         ids=lambda command: command[0])
@pytest.mark.parametrize("folder", ["missing", "a_file"])
def test_a_grid_path_in_no_folder_is_refused_before_any_work(tmp_path, command, folder):
    (tmp_path / "a_file").write_text("not a folder")
    result = CliRunner().invoke(main, [*command, str(tmp_path / folder / "grid.png")])
    assert result.exit_code == 2
    assert f"{tmp_path / folder / 'grid.png'}: no folder {tmp_path / folder} to write it in" in result.output


def test_an_output_folder_that_cannot_be_written_fails_with_one_clear_message(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--limit", "8", "--out",
                                       str(tmp_path / "a_file" / "out"), "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'a_file'}")
    assert "Traceback" not in result.output


def test_unknown_recipe_fails_with_one_clear_message():
    result = CliRunner().invoke(main, ["build", "--recipe", "nope"])
    assert result.exit_code != 0
    assert "unknown recipe 'nope'" in result.output and "maug" in result.output


def _faces_with_a_corrupt_file(root: Path) -> Path:
    (root / "faces" / "alice").mkdir(parents=True)
    cv2.imwrite(str(root / "faces" / "alice" / "0.png"), np.full((112, 112, 3), 128, np.uint8))
    (root / "faces" / "alice" / "1.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root / "faces"


def test_a_corrupt_image_is_skipped_and_counted(tmp_path):
    faces = _faces_with_a_corrupt_file(tmp_path)
    result = run("build", "--recipe", "maug", "--source", str(faces), "--out", str(tmp_path / "ds"), "--device", "cpu")
    assert result.exit_code == 0
    first, *rest = result.output.strip().splitlines()[-3:]
    assert "1 pair in 1 shard" in first and "pairs/s)" in first
    assert rest[0].startswith("skipped 1 input:") and rest[1].strip().endswith("1.jpg: truncated JPEG (no end-of-image marker)")
    assert len(datasets.load_from_disk(str(tmp_path / "ds"))) == 1


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_batch_whose_every_image_is_unreadable_is_skipped_whole(tmp_path, workers):
    faces = _faces_with_a_corrupt_file(tmp_path)
    result = run("build", "--recipe", "mixed", "--source", str(faces), "--out", str(tmp_path / "ds"), "--device", "cpu",
                 "--batch-size", "1", "-j", workers)
    assert result.exit_code == 0, result.output
    assert "1 pair in" in result.output and "skipped 1 input:" in result.output


def test_under_strict_a_corrupt_image_fails_the_build_naming_the_file(tmp_path):
    faces = _faces_with_a_corrupt_file(tmp_path)
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--source", str(faces), "--strict",
                                       "--out", str(tmp_path / "ds"), "--device", "cpu"])
    assert result.exit_code != 0
    assert "1.jpg: truncated JPEG" in result.output
    assert not (tmp_path / "ds" / "state.json").exists()
    unfinished = tmp_path / "ds" / "data-00000-of-00001.arrow.partial"
    assert unfinished.exists() and os.path.realpath(unfinished) not in _open_files()  # let go, not left to the garbage collector


def _open_files() -> set[str]:
    """The paths this process holds open (Linux)."""
    descriptors = Path("/proc/self/fd")
    if not descriptors.is_dir():
        pytest.skip("needs /proc/self/fd")
    return {os.path.realpath(descriptors / fd) for fd in os.listdir(descriptors)}


@pytest.mark.parametrize("cores, ranks_here, workers", [(64, None, 16), (64, "8", 8), (96, "8", 12), (2, "4", 1), (2, None, 2)])
def test_decoding_workers_share_the_machines_cores_among_its_torchrun_ranks(monkeypatch, cores, ranks_here, workers):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2 * cores)  # the machine's: more than this process may use
    if ranks_here is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", ranks_here)
    assert cli.default_workers() == workers


@pytest.mark.parametrize("option, workers", [([], 3), (["-j", "0"], 0)])
def test_training_decodes_in_as_many_workers_as_a_build_unless_told(monkeypatch, tmp_path, option, workers):
    from degrade.stream import PairStream

    asked = []

    def from_source(*args, num_workers, **options):
        asked.append(num_workers)
        raise ValueError("stopped before training")

    monkeypatch.setattr(cli, "default_workers", lambda: 3)
    monkeypatch.setattr(PairStream, "from_source", from_source)
    result = run("train", "lrfr", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "run"), *option)
    assert "stopped before training" in result.output and asked == [workers]


@pytest.mark.parametrize("device, says", [
    ("mps", "expected cpu, cuda, cuda:N or auto, got 'mps'"),
    ("gpu", "expected cpu, cuda, cuda:N or auto, got 'gpu'"),
    ("cuda:x", "expected cpu, cuda, cuda:N or auto, got 'cuda:x'"),
])
@pytest.mark.parametrize("command", [["build", "--recipe", "maug"], ["eval", "--model", "x=mobilefacenet"]])
def test_a_device_other_than_cpu_or_cuda_is_a_usage_error_before_any_work(tmp_path, device, says, command):
    result = CliRunner().invoke(main, [*command, "--out", str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 2 and says in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize("gpus, device, says", [
    (0, "cuda", r"cuda: CUDA is not available here \(torch .*\); use --device cpu"),
    (1, "cuda:1", r"cuda:1: this machine has 1 CUDA device, from cuda:0; use --device cpu"),
])
def test_a_cuda_device_the_machine_lacks_is_a_usage_error_before_any_work(monkeypatch, tmp_path, gpus, device, says):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--out", str(tmp_path / "out"), "--device", device])
    assert result.exit_code == 2 and re.search(says, " ".join(result.output.split()))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("asked, local_rank, device", [
    ("cuda", "3", "cuda:3"), ("auto", "1", "cuda:1"), ("cuda:0", "3", "cuda:0"), ("cuda", None, "cuda"),
    ("cpu", "3", "cpu"),
])
def test_under_torchrun_cuda_is_each_ranks_own_gpu_and_the_current_device(monkeypatch, asked, local_rank, device):
    """Every rank of `torchrun --nproc-per-node 8 -m degrade train ...` on an 8-GPU machine used to
    take cuda:0."""
    current = []

    def set_device(chosen: torch.device) -> None:
        if chosen.index is None:
            raise ValueError("Expected a torch.device with a specified index")  # as torch's own does
        current.append(str(chosen))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert cli._resolve_device(asked) == device
    assert current == ([] if device in ("cpu", "cuda") else [device])


def test_more_torchrun_ranks_on_a_machine_than_its_gpus_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(click.BadParameter, match=r"rank 2 of this machine, which has 2 CUDA devices: start one rank "
                                                 r"per GPU \(--nproc-per-node 2 or fewer\), or name the GPU they share"):
        cli._resolve_device("cuda")


def test_an_empty_source_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--source", str(tmp_path / "empty")])
    assert result.exit_code != 0 and "no images found" in result.output


def test_files_a_folder_source_does_not_read_are_counted_in_one_warning_line(tmp_path):
    face = cv2.imencode(".png", np.zeros((112, 112, 3), np.uint8))[1].tobytes()
    for name in ["alice/1.png", "alice/2.heic", "bob/1.png", "bob/1.txt", "bob/2.txt", "loose.png"]:
        (tmp_path / "faces" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "faces" / name).write_bytes(face)
    result = run("build", "--recipe", "maug", "--source", str(tmp_path / "faces"), "--out", str(tmp_path / "out"))
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warning == [f"warning: {tmp_path / 'faces'}: 3 files in identity folders not read, not images by their suffix "
                       f"(.txt 2, .heic 1; images are .jpg .jpeg .jpe .jfif .png .bmp .webp .tif .tiff .pgm .ppm .gif); "
                       f"1 image directly in it not read (faces are read from identity sub-folders, "
                       f"{tmp_path / 'faces'}/<identity>/)"]
    assert "wrote" in result.stdout and datasets.load_from_disk(str(tmp_path / "out")).num_rows == 2


def test_a_warning_is_written_once_per_command_as_one_line(capsys):
    """torch's DataLoader gives its advice on the worker count from two places: one line, not two."""
    say = cli._WarningLines()
    for _ in range(2):
        say(UserWarning("This DataLoader will create 4 worker processes"), UserWarning, "dataloader.py", 1)
    say(UserWarning("another"), UserWarning, "dataloader.py", 2)
    assert capsys.readouterr().err == "warning: This DataLoader will create 4 worker processes\nwarning: another\n"


@pytest.mark.parametrize("rank, says", [("0", "warning: every rank reads the same source\n"), ("1", "")])
def test_under_torchrun_a_warning_is_written_by_rank_0_alone(monkeypatch, capsys, rank, says):
    monkeypatch.setenv("RANK", rank)
    cli._WarningLines()(UserWarning("every rank reads the same source"), UserWarning, "folder.py", 1)
    assert capsys.readouterr().err == says


@pytest.mark.parametrize("name, unpack", [("faces.zip", True), ("shard-000.TAR.GZ", True), ("faces.jpg", False)])
def test_a_source_file_of_a_kind_degrade_does_not_read_is_named_as_such_and_an_archive_to_unpack(tmp_path, name, unpack):
    (tmp_path / name).write_bytes(b"PK")
    result = CliRunner().invoke(main, ["build", "--recipe", "maug", "--source", str(tmp_path / name)])
    assert result.exit_code == 1 and f"{tmp_path / name}: not a kind of source degrade reads" in result.output
    assert ("; an archive: unpack it and give its folder" in result.output) == unpack


@pytest.mark.parametrize("sizes", [dict(batch_size=0), dict(shard_size=0), dict(limit=0)])
def test_build_dataset_refuses_empty_batches_shards_or_limits(tmp_path, sizes):
    """A limit of 0 said the source was empty."""
    from degrade.arrow import BuildError, build_dataset

    with pytest.raises(BuildError, match="batch_size, shard_size and limit must be >= 1"):
        build_dataset(load_recipe("maug"), DemoSource(), tmp_path / "out", **{"limit": 10, **sizes}, progress=False)
    assert not (tmp_path / "out").exists()
