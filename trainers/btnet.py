"""BTNet (branch-to-trunk): small resolution-specific branches implanted into a frozen trunk.

The trunk is a face backbone trained on HQ faces (here: any registered backbone, e.g. the
pretrained MobileFaceNet), frozen. A branch for side ``s`` takes the native s x s face (no
up-sampling) and produces the feature map the trunk has at its first stage whose maps are
``s`` px high (for MobileFaceNet: 56 -> after conv1, 28 -> after the first stride-2 block,
14 and 7 further on); the rest of the trunk then finishes the embedding. Branches learn by
distillation from the trunk's own view of the HQ face: feature MSE at the implant stage,
embedding loss 1 - cos against the trunk's HQ embedding, and a margin softmax over a fixed
classifier (the trunk's class centres, see :class:`BTNetTrainer`), so branch embeddings stay
comparable with trunk embeddings of HQ faces (cross-resolution matching).

A face of any side goes to one branch by ``selection``: ``floor`` (the largest branch not
above it, down-sampling), ``ceil`` (the smallest not below it, up-sampling) or ``nearest``;
sides at or above the trunk's input size, and ``ceil`` above the largest branch, use the trunk.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainers.backbones import IBasicBlock, normalise, pyramid, run_stages, stage_shapes
from trainers.heads import ArcFace

SELECTIONS = ("floor", "nearest", "ceil")


def resize_to(images: torch.Tensor, side: int) -> torch.Tensor:
    """(N, C, s, s) in [0, 1] -> (N, C, side, side): area average down, bicubic up."""
    if images.shape[-1] == side:
        return images
    if images.shape[-1] > side:
        return F.interpolate(images, size=(side, side), mode="area")
    return F.interpolate(images, size=(side, side), mode="bicubic", align_corners=False).clamp(0, 1)


class Branch(nn.Module):
    """Native (N, 3, s, s) faces in [0, 1] -> (N, C, H, W), the trunk's map at the implant stage.

    A 3x3 stem at the branch's width (the implant stage's channels), ``blocks`` residual
    blocks at full resolution, and a 1x1 projection. The input is cropped like the trunk's
    (MobileFaceNet's central 96 of 112 columns, scaled to ``s``); a residual mismatch of the
    map (7 px faces: 7 columns for the trunk's 6) is closed by adaptive average pooling.
    """

    def __init__(self, side: int, implant_shape: tuple[int, int, int], crop_columns: tuple[int, int],
                 trunk_size: int = 112, blocks: int = 1) -> None:
        super().__init__()
        channels, self.height, self.width = implant_shape
        self.left = round(side * crop_columns[0] / trunk_size)
        self.right = side - round(side * (trunk_size - crop_columns[1]) / trunk_size)
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels),
                                  nn.PReLU(channels))
        self.blocks = nn.Sequential(*(IBasicBlock(channels, channels) for _ in range(blocks)))
        self.project = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.project(self.blocks(self.stem(normalise(images[..., self.left:self.right]))))
        if x.shape[-2:] != (self.height, self.width):
            x = F.adaptive_avg_pool2d(x, (self.height, self.width))
        return x


class BTNet(nn.Module):
    """A frozen trunk and its branches; ``forward`` embeds faces of any side (see the module doc).

    Args:
        trunk: a backbone with ``prepare``, ``stages``, ``embed`` and ``crop_columns``.
        sides: branch sides; each must be the height of some trunk stage's maps.
        selection: ``floor`` | ``nearest`` | ``ceil``.
        blocks: residual blocks per branch.
        size: the trunk's input side.
    """

    native_input = True  # evaluation feeds native small probes, not up-sampled ones

    def __init__(self, trunk: nn.Module, sides: tuple[int, ...] = (7, 14, 28, 56), selection: str = "ceil",
                 blocks: int = 1, size: int = 112) -> None:
        super().__init__()
        self.trunk = trunk.eval().requires_grad_(False)
        self.sides, self.size = tuple(sorted(sides)), size
        self.selection = selection
        shapes = stage_shapes(trunk, size)
        heights = sorted({h for _, h, _ in shapes})
        self.implant: dict[int, int] = {}
        branches = {}
        for side in self.sides:
            stage = next((i for i, (_, h, _) in enumerate(shapes) if h == side), None)
            if stage is None or side >= size:
                raise ValueError(f"no trunk stage has {side}-px maps to implant a branch at; its maps are {heights} px")
            self.implant[side] = stage
            branches[str(side)] = Branch(side, shapes[stage], trunk.crop_columns, size, blocks)
        self.branches = nn.ModuleDict(branches)
        self.embedding_size = trunk.embedding_size

    @property
    def selection(self) -> str:
        return self._selection

    @selection.setter
    def selection(self, value: str) -> None:
        if value not in SELECTIONS:
            raise ValueError(f"unknown branch selection {value!r}; use one of {', '.join(SELECTIONS)}")
        self._selection = value

    def train(self, mode: bool = True) -> BTNet:
        super().train(mode)
        self.trunk.eval()
        return self

    def route(self, side: int) -> int:
        """The branch side an input of ``side`` px goes to (``size`` = the trunk itself)."""
        if side >= self.size:
            return self.size
        options = [*self.sides, self.size]
        if self.selection == "floor":
            return max((s for s in options if s <= side), default=options[0])
        if self.selection == "ceil":
            return min(s for s in options if s >= side)
        return min(options, key=lambda s: (abs(s - side), -s))  # ties go to the larger side

    def finish(self, implanted: torch.Tensor, side: int) -> torch.Tensor:
        """Embed a branch's map through the trunk stages after its implant: -> (N, D)."""
        return self.trunk.embed(run_stages(self.trunk.stages()[self.implant[side] + 1:], implanted))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, s, s) faces in [0, 1], any s -> (N, D) embeddings."""
        side = self.route(images.shape[-1])
        images = resize_to(images, side)
        if side == self.size:
            return self.trunk(images)
        return self.finish(self.branches[str(side)](images), side)

    def added_parameters(self) -> dict[int, float]:
        """Parameters each branch adds, as a fraction of the trunk's."""
        trunk = sum(p.numel() for p in self.trunk.parameters())
        return {side: sum(p.numel() for p in self.branches[str(side)].parameters()) / trunk for side in self.sides}


class BTNetTrainer(nn.Module):
    """Distils every branch from the trunk on native LQ faces (batch key ``lq_side``); faces the
    routing sends to the trunk (e.g. 56 px under ``ceil`` without a 56 branch) are left out.

    Per sample, with its branch's map f, the trunk's HQ map t at the implant stage, the branch
    embedding e and the trunk's HQ embedding h: loss = w_f MSE(f, t) + w_e (1 − cos(e, h)) +
    w_c ArcFace(e). The ArcFace classifier is fixed (no gradient): row k is the running sum of
    the trunk's normalised HQ embeddings of identity k, i.e. the trunk's class centre, so the
    branches learn the trunk's classifier rather than a new one. w_c defaults to 0: in the LFW
    pilot (docs/results.md) its scale-64 cross-entropy swamped the two distillation terms and
    cost 7-25 points at 7 and 14 px against w = (1, 1, 0).
    """

    def __init__(self, model: BTNet, classes: int, feature_weight: float = 1.0, embedding_weight: float = 1.0,
                 class_weight: float = 0.0) -> None:
        super().__init__()
        self.backbone = model
        self.head = ArcFace(model.embedding_size, classes)
        self.head.weight.requires_grad_(False)
        with torch.no_grad():
            self.head.weight.zero_()
        self.weights = (feature_weight, embedding_weight, class_weight)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if "lq_side" not in batch:
            raise ValueError("BTNet trains on native-size LQ faces: use a recipe whose last stage is a native "
                             "resize (e.g. the btnet recipe)")
        model, labels = self.backbone, batch["identity"]
        hq, lq, sides = batch["hq"].float() / 255, batch["lq"].float() / 255, batch["lq_side"]
        with torch.no_grad():
            hq_maps = pyramid(model.trunk, hq)
            target = model.trunk.embed(hq_maps[-1])
            if self.training:
                self.head.weight.index_add_(0, labels, F.normalize(target.float()))
        terms, idle = torch.zeros(3, device=hq.device), set(model.sides)
        for side in sides.unique().tolist():
            rows = (sides == side).nonzero().squeeze(1)
            branch_side = model.route(side)
            if branch_side == model.size:
                continue  # the trunk's own job: nothing to distil
            idle.discard(branch_side)
            maps = model.branches[str(branch_side)](resize_to(lq[rows, :, :side, :side], branch_side))
            embedding = model.finish(maps, branch_side)
            share = len(rows) / len(labels)
            terms = terms + share * torch.stack([
                F.mse_loss(maps.float(), hq_maps[model.implant[branch_side]][rows].float()),
                (1 - F.cosine_similarity(embedding.float(), target[rows].float())).mean(),
                F.cross_entropy(self.head(embedding, labels[rows]), labels[rows]),
            ])
        # A branch no face of this batch goes to takes part with weight 0, so the backward pass reaches
        # every branch whatever the batch (DDP requires it of each rank's step; a batch whose faces
        # all go to the trunk, as small ones can with few branches, then makes a step of loss 0).
        untouched = sum(p.sum() for side in idle for p in model.branches[str(side)].parameters())
        loss = sum(w * t for w, t in zip(self.weights, terms)) + 0 * untouched
        return loss, {"feature_mse": terms[0].detach(), "embedding": terms[1].detach(), "identity": terms[2].detach()}
