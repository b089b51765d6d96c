"""The benchmark's OpenCV loop does the engine's work, and `degrade bench` reports a consistent ratio."""

import multiprocessing
import re
import signal

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from degrade.bench import _init_build_worker, _init_engine_worker, _init_worker, _one_opencv_thread
from degrade.cli import main
from degrade.engine import to_uint8
from degrade.opencv_reference import degrade_one, replay_plan
from degrade.recipe import leaf_params, load_recipe, parse_recipe
from degrade.workers import _exit_quietly


@pytest.mark.parametrize("stage", [
    {"op": "resize", "sides": [7, 14, 20], "weights": [1, 1, 2]},
    {"op": "resize", "sides": [7, 28], "output": "native"},
    {"op": "gaussian_blur", "sigma": [0.5, 3.0]},
    {"op": "motion_blur"},
    {"op": "defocus_blur"},
    {"op": "anisotropic_blur"},
    {"op": "jpeg", "quality": [30, 90]},
    {"op": "erase", "fill": ["zero", "mean"]},
    {"op": "crop_pad"},
    {"op": "illumination"},
], ids=lambda stage: stage["op"] + ("_native" if stage.get("output") else ""))
def test_opencv_reference_makes_the_same_pairs_as_the_engine(stage, faces):
    recipe = parse_recipe({"stages": [stage]})
    keys = torch.arange(16)
    lq, params = recipe(faces[:16], keys)
    engine = to_uint8(lq).permute(0, 2, 3, 1).numpy().astype(int)
    hq = to_uint8(faces[:16]).permute(0, 2, 3, 1).numpy()
    plan = replay_plan(recipe, params)
    for i in range(16):
        reference = degrade_one(hq[i], plan[i]).astype(int)
        side = reference.shape[0]
        assert np.abs(reference - engine[i, :side, :side]).mean() < 1.5


@pytest.mark.parametrize("stage", [{"op": "gaussian_noise", "sigma": [10, 10], "grey": 0.0},
                                   {"op": "poisson_noise", "scale": [2.0, 2.0], "grey": 0.5},
                                   {"op": "erase", "fill": ["noise"], "p": 1.0},
                                   {"op": "turbulence", "strength": [1.0, 1.0]},
                                   {"op": "elastic", "magnitude": [2.0, 2.0]}],
                         ids=lambda s: s["op"] + ("_noise_fill" if s.get("fill") else ""))
def test_opencv_reference_of_random_fields_changes_images_as_much_as_the_engine(stage, faces):
    recipe = parse_recipe({"stages": [stage]})
    lq, params = recipe(faces[:16], torch.arange(16))
    hq = to_uint8(faces[:16]).permute(0, 2, 3, 1).numpy()
    plan = replay_plan(recipe, params)
    reference = np.stack([degrade_one(hq[i], plan[i]) for i in range(16)]).astype(float)
    engine_change = np.abs(to_uint8(lq).permute(0, 2, 3, 1).numpy() - hq.astype(float)).mean()
    reference_change = np.abs(reference - hq).mean()
    assert 0.6 < reference_change / engine_change < 1.6


def test_the_opencv_loops_plan_gives_each_sample_the_ops_the_engine_ran_on_it_with_their_params():
    recipe = load_recipe("catface")  # a one-of group (turbulence or capture) and stages of p < 1
    params = recipe.sample(torch.arange(64))
    plan = replay_plan(recipe, params)
    ran = recipe.ran(params)
    assert len(plan) == 64
    for index, ops in enumerate(plan):
        assert [leaf.path for leaf, _ in ops] == [leaf.path for leaf in recipe.leaves if ran[leaf.path][index]]
        for leaf, face_params in ops:
            assert face_params == {field: value[index].item() for field, value in leaf_params(params, leaf).items()}
    assert len({len(ops) for ops in plan}) > 1  # the samples do not all run the same ops


def _threads() -> tuple[int, int]:
    return cv2.getNumThreads(), torch.get_num_threads()


def test_each_process_of_the_opencv_loop_runs_one_thread_of_opencv_and_of_torch():
    """Per core, as the engine's processes run (OpenCV's default is a thread per core); this process's
    OpenCV gets its threads back afterwards."""
    threads = cv2.getNumThreads()
    faces = np.zeros((1, 112, 112, 3), np.uint8)
    with _one_opencv_thread(), multiprocessing.get_context("fork").Pool(
            1, initializer=_init_worker, initargs=("maug", faces)) as pool:
        assert pool.apply(_threads) == (1, 1)
    assert cv2.getNumThreads() == threads


def _stop_signals() -> tuple[bool, bool]:
    return signal.getsignal(signal.SIGINT) == signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is _exit_quietly


@pytest.mark.parametrize("initializer, initargs", [
    (_init_worker, ("maug", np.zeros((1, 112, 112, 3), np.uint8))),
    (_init_engine_worker, ("maug", torch.zeros(1, 3, 112, 112, dtype=torch.uint8))),
    (_init_build_worker, ("maug", "demo:2", "raw")),
])
def test_the_bench_pools_processes_leave_ctrl_c_to_the_command_and_end_quietly_on_sigterm(initializer, initargs):
    """They kept the command's handlers: one raised its stop exception inside a lock of the pool's
    queue, and `degrade bench --build` hung in the pool's shutdown after SIGTERM."""
    with multiprocessing.get_context("fork").Pool(1, initializer=initializer, initargs=initargs) as pool:
        assert pool.apply(_stop_signals) == (True, True)


def test_bench_prints_both_best_rates_their_ratio_and_each_round():
    output = CliRunner().invoke(main, ["bench", "--recipe", "maug", "--n", "64", "--batch-size", "32",
                                       "-j", "1", "--rounds", "2", "--device", "cpu"]).output
    engine = float(re.search(r"engine, 1 process\s+([\d,]+) pairs/s", output).group(1).replace(",", ""))
    opencv = float(re.search(r"OpenCV loop, 1 process\s+([\d,]+) pairs/s", output).group(1).replace(",", ""))
    ratio = float(re.search(r"ratio engine / OpenCV\s+([\d.]+)x", output).group(1))
    each_round = [float(r) for r in re.search(r"round by round: ([\d.]+)x, ([\d.]+)x\)", output).groups()]
    assert engine > 0 and opencv > 0 and "best of 2 rounds" in output
    assert ratio == pytest.approx(engine / opencv, rel=0.05, abs=0.01)
    assert all(r > 0 for r in each_round)
    engine_stage, opencv_stage = re.search(r"\n    resize \(resize\)\s+([\d,]+)\s+([\d,]+)\n", output).groups()
    assert float(engine_stage.replace(",", "")) > 0 and float(opencv_stage.replace(",", "")) > 0


def test_bench_names_the_size_of_the_recipes_faces(tmp_path):
    (tmp_path / "small.yaml").write_text("size: 64\nstages:\n  - {op: resize, sides: [7, 14]}\n")
    output = CliRunner().invoke(main, ["bench", "--recipe", str(tmp_path / "small.yaml"), "--n", "32", "-b", "32",
                                       "-j", "1", "--rounds", "1", "--device", "cpu"]).output
    assert output.startswith("recipe small, 32 pairs of 64x64, engine on cpu (batch 32), best of 1 round each\n")


def test_bench_build_reports_both_formats_with_consistent_ratios():
    output = CliRunner().invoke(main, ["bench", "--build", "--recipe", "maug", "--n", "64", "--batch-size", "32",
                                       "-j", "1", "--device", "cpu"]).output
    rows = re.findall(r"(raw|png)\s+engine\s+([\d,]+) pairs/s\s+OpenCV loop\s+([\d,]+) pairs/s\s+ratio\s+([\d.]+)x",
                      output)
    assert [row[0] for row in rows] == ["raw", "png"]
    for _, engine, opencv, ratio in rows:
        engine, opencv = float(engine.replace(",", "")), float(opencv.replace(",", ""))
        assert float(ratio) == pytest.approx(engine / opencv, rel=0.05, abs=0.01)


def test_bench_train_reports_the_training_rate_and_the_share_spent_waiting_for_data_in_fp32_on_a_cpu():
    """bf16, the default on a GPU, ran 4x slower than fp32 on a CPU without bf16 units."""
    output = CliRunner().invoke(main, ["bench", "--train", "mobilefacenet", "--recipe", "maug", "--n", "96",
                                       "--batch-size", "16", "-j", "1", "--device", "cpu"]).output
    assert "training mobilefacenet (fp32, batch 16)" in output, output
    assert re.search(r"steps timed\s+4 \(after 2 warm-up steps\)", output), output
    assert float(re.search(r"training\s+([\d,]+) pairs/s", output).group(1).replace(",", "")) > 0
    assert 0 < float(re.search(r"waiting for data\s+([\d.]+) %", output).group(1)) < 100


@pytest.mark.parametrize("options, says", [
    (["--build", "--train", "mobilefacenet"], "--build and --train time different things; give one of them"),
    (["--build", "--rounds", "2"], "--rounds would have no effect: --build and --train run once"),
    (["--train", "mobilefacenet", "--rounds", "2"], "--rounds would have no effect: --build and --train run once"),
    (["--precision", "fp16"], "--precision would have no effect: it is the autocast of the --train steps"),
    (["--build", "--precision", "fp32"], "--precision would have no effect"),
])
def test_bench_refuses_options_that_do_not_go_together_before_any_work(options, says):
    result = CliRunner().invoke(main, ["bench", *options, "--recipe", "maug", "--source", "no/such/folder",
                                       "--device", "cpu"])
    assert result.exit_code == 2 and says in result.output


@pytest.mark.parametrize("options", [[], ["--build", "--n", "4"], ["--train", "mobilefacenet", "--n", "4", "-b", "2"]])
def test_bench_on_a_source_whose_faces_are_all_unreadable_fails_naming_one(unreadable_faces, options):
    result = CliRunner().invoke(main, ["bench", "--recipe", "maug", "--source", str(unreadable_faces), "--device", "cpu",
                                       "-j", "1", *options])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # an Error line, no traceback
    assert "ann/1.jpg: not a readable image" in result.output and "warm-up" not in result.output  # no scratch folder
    assert "every one of the 2 faces " in result.output and "was skipped (key 0: " in result.output


def test_bench_train_refuses_a_recipe_of_native_size_faces_before_any_work():
    result = CliRunner().invoke(main, ["bench", "--train", "mobilefacenet", "--recipe", "btnet", "--device", "cpu"])
    assert result.exit_code == 2 and "recipe 'btnet' makes native-size LQ faces; --train times LRFR steps" in result.output
