"""Trainers built from a spec: the JSON-able dict every checkpoint carries, so a run's
checkpoint is rebuilt for evaluation without its command line.

A spec holds ``trainer`` (a name of :data:`TRAINERS`), ``backbone``, ``classes``, ``head``
(LRFR and LGAF: the others' heads are their papers') and the trainer's own options, e.g.::

    {"trainer": "lgaf", "backbone": "mobilefacenet", "classes": 3900, "head": "arcface",
     "mode": "lgf", "heads": 4}

A CATFace stage-2 spec also holds ``stage1_classes``, the identities its stage-1 model learnt
(stage 2 may train on other faces).

Every trainer has ``embedding(images) -> (N, D)``: the embedding it is evaluated by.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainers.backbones import build_backbone, feature_shape
from trainers.checkpoints import training_checkpoint


def _lrfr(spec: dict, backbone: nn.Module) -> nn.Module:
    from trainers.lrfr import LRFR

    teacher = build_backbone(spec["backbone"]) if spec["teacher"] else None
    return LRFR(backbone, spec["classes"], head=spec["head"], use_lq=spec["use_lq"],
                contrast_weight=spec["contrast_weight"], p=spec["p"], teacher=teacher)


def _lgaf(spec: dict, backbone: nn.Module) -> nn.Module:
    from trainers.lgaf import LGAF

    return LGAF(backbone, spec["classes"], feature_shape(backbone), mode=spec["mode"], heads=spec["heads"],
                head=spec["head"])


def _catface(spec: dict, backbone: nn.Module) -> nn.Module:
    from trainers.catface import CATFaceStage1, CATFaceStage2

    shape = feature_shape(backbone)
    if spec["stage"] == 1:
        return CATFaceStage1(backbone, spec["classes"], shape, tuple(spec["columns"]))
    stage1 = CATFaceStage1(backbone, spec["stage1_classes"], shape, tuple(spec["columns"]))
    return CATFaceStage2(stage1, spec["classes"], shape, spec["fusion"])


def _btnet(spec: dict, backbone: nn.Module) -> nn.Module:
    from trainers.btnet import BTNet, BTNetTrainer

    model = BTNet(backbone, tuple(spec["sides"]), spec["selection"], spec["blocks"])
    return BTNetTrainer(model, spec["classes"], *spec["loss_weights"])


TRAINERS: dict[str, Callable[[dict, nn.Module], nn.Module]] = {
    "lrfr": _lrfr, "lgaf": _lgaf, "catface": _catface, "btnet": _btnet}


def build_trainer(spec: dict, backbone: nn.Module | None = None) -> nn.Module:
    """The trainer ``spec`` describes, on ``backbone`` (default: a fresh one of ``spec['backbone']``).

    Weights that come from elsewhere (an LRFR teacher, CATFace's stage 1) are left for the caller.
    """
    if spec.get("trainer") not in TRAINERS:
        raise ValueError(f"unknown trainer {spec.get('trainer')!r}; known: {', '.join(TRAINERS)}")
    trainer = TRAINERS[spec["trainer"]](spec, backbone if backbone is not None else build_backbone(spec["backbone"]))
    trainer.spec = dict(spec)
    return trainer


class Embedder(nn.Module):
    """A trained trainer seen as a backbone: images in [0, 1] -> its ``embedding``."""

    def __init__(self, trainer: nn.Module) -> None:
        super().__init__()
        self.trainer = trainer
        self.native_input = getattr(trainer.backbone, "native_input", False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trainer.embedding(images)


def load_trained(path: str | Path) -> Embedder:
    """The model in a training checkpoint (``last.pt`` or ``step-*.pt``) rebuilt from its spec."""
    state = training_checkpoint(path)
    trainer = build_trainer(state["spec"])
    trainer.load_state_dict(state["trainer"])
    return Embedder(trainer.eval())
