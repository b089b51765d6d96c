"""LRFR (Ling et al.): multi-resolution augmentation plus a feature contrast loss.

One backbone sees the HQ face and its MAug LQ view; a margin-softmax head classifies both;
L_LogExp pulls the LQ embedding towards the HQ one, taken from the same network with the
gradient stopped (``teacher=None``) or from a frozen teacher. Switches give the ablation
rows: HQ only (no LQ loss, no contrast), MAug only (no contrast), MAug + L_LogExp.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainers.heads import build_head
from trainers.losses import log_exp_contrast


class LRFR(nn.Module):
    """Args:
        backbone: maps (N, 3, 112, 112) in [0, 1] to (N, D).
        classes: identities in the training data.
        head: ``arcface`` | ``cosface`` | ``adaface``.
        use_lq: classify the LQ view too (MAug).
        contrast_weight: weight of L_LogExp (0 = off).
        p: the exponent of L_LogExp (1 or 2).
        teacher: a frozen network giving the HQ target embedding; None = this backbone, stop-gradient.
    """

    def __init__(self, backbone: nn.Module, classes: int, head: str = "arcface", use_lq: bool = True,
                 contrast_weight: float = 1.0, p: float = 2.0, teacher: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = build_head(head, backbone.embedding_size, classes)
        self.use_lq, self.contrast_weight, self.p = use_lq, contrast_weight, p
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> LRFR:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        hq = batch["hq"].float() / 255
        labels = batch["identity"]
        if not self.use_lq:
            hq_embedding = self.backbone(hq)
            loss = F.cross_entropy(self.head(hq_embedding, labels), labels)
            return loss, {"hq_loss": loss.detach()}
        lq = batch["lq"].float() / 255
        embeddings = self.backbone(torch.cat([hq, lq]))
        hq_embedding, lq_embedding = embeddings.chunk(2)
        hq_loss = F.cross_entropy(self.head(hq_embedding, labels), labels)
        lq_loss = F.cross_entropy(self.head(lq_embedding, labels), labels)
        metrics = {"hq_loss": hq_loss.detach(), "lq_loss": lq_loss.detach()}
        loss = hq_loss + lq_loss
        if self.contrast_weight > 0:
            if self.teacher is not None:
                with torch.no_grad():
                    target = self.teacher(hq)
            else:
                target = hq_embedding.detach()
            contrast = log_exp_contrast(lq_embedding, target, self.p)
            metrics["contrast"] = contrast.detach()
            loss = loss + self.contrast_weight * contrast
        return loss, metrics
