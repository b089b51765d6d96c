"""Reading checkpoint files: backbone weights (``--init``, ``--teacher``, ``eval --model``) and
training checkpoints (resume, CATFace's ``--stage1``), with one clear error for a file that
cannot be used (not a checkpoint, not of the model, or weights that are not finite numbers)."""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from degrade.text import counted


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def read_checkpoint(path: str | Path) -> object:
    """What ``torch.save`` wrote to ``path``, loaded onto the CPU by torch's weights-only unpickler:
    tensors and plain values (dicts, lists, numbers, strings), never code named in the file. A
    checkpoint is a pickle, and a full unpickler calls whatever it names; face-recognition weights
    are often downloaded. (``last.pt`` files of earlier versions name their run folder as a
    ``PosixPath``, which is allowed too.)

    Raises :class:`CheckpointError` naming the file when it cannot be read this way: an empty,
    truncated or foreign file makes ``torch.load`` raise any of EOFError, UnpicklingError,
    ValueError, RuntimeError or others, with messages such as "invalid literal for int()" that
    say neither which file nor what is wrong with it."""
    try:
        with torch.serialization.safe_globals([pathlib.PosixPath]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except OSError as error:
        raise CheckpointError(f"{path}: {error.strerror or error}") from None
    except Exception as error:  # noqa: BLE001 - see the docstring: torch.load has no error type of its own
        unsupported = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if unsupported:
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain values ({unsupported[1]}), which are not "
                f"loaded, as unpickling them could run code from the file; if you trust it, save its weights alone, "
                f"e.g. torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pt')") from None
        # The weights-only unpickler wraps its finding ("Unsupported operand 123") in paragraphs of advice,
        # and the zip reader its ("failed finding central directory", a file cut short) in one.
        finding = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(\n\n|$)", str(error), re.DOTALL)
        message = finding[1] if finding else str(error).split(". This is an internal miniz error")[0]
        kind = type(error).__name__
        detail = f"{kind}: {message}" if message else f"{kind}, at {Path(path).stat().st_size} bytes"
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({detail})") from None


def non_finite(tensors: Mapping[str, object]) -> list[str]:
    """The names of the floating-point tensors among ``tensors`` (a state dict) that hold NaN or
    inf, checked with one device sync for them all."""
    named = [(name, t) for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]


def _refuse_non_finite(path: str | Path, state: Mapping[str, object]) -> None:
    broken = non_finite(state)
    if broken:
        raise CheckpointError(f"{path}: NaN or inf in {counted(len(broken), 'tensor')} of its weights (e.g. "
                              f"{broken[0]!r}), as a training run that diverged leaves them; every face would embed "
                              "as NaN")


def backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The backbone weights in a checkpoint file: a bare state dict, or one under a usual key
    (``backbone``, ``net_state_dict``, ``state_dict``, ``model``), ``module.`` prefixes dropped;
    of a degrade run's ``last.pt``, its trainer's backbone (what its step files hold as ``backbone``)."""
    loaded = read_checkpoint(path)
    run_state = isinstance(loaded, dict) and "spec" in loaded and isinstance(loaded.get("trainer"), dict)
    if run_state and "backbone" not in loaded:
        loaded = {name.removeprefix("backbone."): tensor for name, tensor in loaded["trainer"].items()
                  if name.startswith("backbone.")}
    for key in ("backbone", "net_state_dict", "state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    if not (isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values())):
        raise CheckpointError(f"{path}: holds no backbone weights (a {type(loaded).__name__}, not a dict of tensors)")
    _refuse_non_finite(path, loaded)
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def load_backbone_weights(model: nn.Module, path: str | Path) -> None:
    """Fill ``model`` with the weights in ``path``; every parameter and buffer must be there, with its shape."""
    state = backbone_state(path)
    kind = type(model).__name__
    try:
        fit = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a weight of another shape
        detail = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise CheckpointError(f"{path}: not weights of this {kind} ({detail})") from None
    if fit.missing_keys or fit.unexpected_keys:
        raise CheckpointError(
            f"{path}: not weights of this {kind}: {len(fit.missing_keys)} of its tensors missing"
            + (f" (e.g. {fit.missing_keys[0]!r})" if fit.missing_keys else "")
            + f", {len(fit.unexpected_keys)} it does not have"
            + (f" (e.g. {fit.unexpected_keys[0]!r})" if fit.unexpected_keys else ""))


def training_checkpoint(path: str | Path) -> dict:
    """A ``degrade train`` checkpoint (``last.pt``, ``step-*.pt``): a dict with the trainer's weights and spec."""
    state = read_checkpoint(path)
    if not (isinstance(state, dict) and "trainer" in state and "spec" in state):
        raise CheckpointError(f"{path}: not a degrade training checkpoint (no trainer weights and spec)")
    _refuse_non_finite(path, state["trainer"])
    return {**state, "spec": _current_spec(state["spec"])}


def _current_spec(spec: dict | None) -> dict | None:
    """A checkpoint's trainer spec as runs write it now, for one an earlier run saved: a CATFace or
    BTNet spec held a ``head`` neither trainer used (their heads are their papers'; neither takes
    --head now), a CATFace stage-1 spec the ``fusion`` only stage 2 has, and a stage-2 spec no
    ``stage1_classes`` (its stage 1 had learnt its ``classes``: no other could load)."""
    if not spec or spec.get("trainer") not in ("catface", "btnet"):
        return spec
    unused = ("head", "fusion") if spec.get("stage") == 1 else ("head",)  # only CATFace's specs have a stage
    spec = {name: value for name, value in spec.items() if name not in unused}
    if spec.get("stage") == 2:
        spec.setdefault("stage1_classes", spec["classes"])
    return spec
