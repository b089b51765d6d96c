"""The README's Python examples run as written, on the CPU with the demo source standing in for
a GPU and a folder of faces, and do what their comments say."""

import click
import torch

from degrade.arrow import build_dataset
from degrade.cli import main
from degrade.recipe import load_recipe
from degrade.sources import open_source

from .readme import adapted, degrade_commands, python_example


def test_the_readme_reads_a_build_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build_dataset(load_recipe("maug"), open_source("demo"), "out/maug", limit=8, progress=False)
    example = {}
    exec(python_example("from degrade.arrow import open_dataset"), example)
    assert len(example["ds"]) == 8
    assert example["ds"][0]["lq"].size == (112, 112) and example["ds"][0]["params"]["resize"]["side"] in (7, 14, 20)


def test_the_readme_streams_pairs_that_differ_every_epoch():
    code = adapted(python_example("from degrade.recipe import load_recipe\nfrom degrade.sources"), {
        'open_source("faces/")': 'open_source("demo")', 'device="cuda"': 'device="cpu"',
        "num_workers=8": "num_workers=0", "for epoch in range(10):": "for epoch in range(2):",
        "hq, lq = batch": "lqs.setdefault(epoch, []).append(batch['lq']); hq, lq = batch"})
    example = {"lqs": {}}
    exec(code, example)
    hq, lq, lqs = example["hq"], example["lq"], example["lqs"]
    assert hq.shape == lq.shape and hq.shape[1:] == (3, 112, 112) and hq.dtype == torch.float32
    assert 0 <= float(lq.min()) and float(lq.max()) <= 1 and float((hq - lq).abs().mean()) > 0.01
    assert [len(batch) for batch in lqs[0]] == [len(batch) for batch in lqs[1]] == [512]  # whole batches of 1,000 faces
    assert not torch.equal(lqs[0][0], lqs[1][0])


def test_the_readme_replays_a_recipe_from_its_params(faces):
    example = {"hq": faces[:16]}
    exec(python_example("import torch\nfrom degrade.recipe import load_recipe"), example)
    assert example["lq"].shape == (16, 3, 112, 112) and not torch.equal(example["lq"], faces[:16])
    assert set(example["params"]["resize.side"].tolist()) <= {7, 14, 20}



def test_every_option_the_readmes_commands_use_is_one_the_command_takes():
    context = click.Context(main)
    commands = degrade_commands()
    assert len(commands) >= 15 and ["build", "--recipe", "maug"] in commands
    for words in commands:
        command, rest = main, words
        while isinstance(command, click.Group):
            command, rest = command.get_command(context, rest[0]), rest[1:]
            assert command is not None, f"README: degrade {' '.join(words)}: no such command"
        options = {option for param in command.params for option in param.opts + param.secondary_opts}
        used = [word.strip("[]").split("=")[0] for word in rest if word.strip("[").startswith("-")]
        assert set(used) <= options, f"README: degrade {' '.join(words)}: {sorted(set(used) - options)} not taken"
