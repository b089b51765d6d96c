"""Margin-softmax heads: ArcFace, CosFace, AdaFace, with their published defaults.

A head holds one weight vector per class and maps (N, D) embeddings (not normalised) and
(N,) labels to (N, C) logits with the margin applied to each sample's own class; the loss is
plain cross-entropy on them.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

EPS = 1e-3


class MarginHead(nn.Module):
    """Shared part: normalised class weights and cosines. Subclasses set ``target_logit``."""

    def __init__(self, embedding_size: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(classes, embedding_size))
        nn.init.normal_(self.weight, std=0.01)
        self.scale = scale

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, C) float32 cosines, also under bf16/fp16 autocast: margins act near cos = 1, where
        bf16 resolves only steps of 0.004."""
        with torch.autocast(embeddings.device.type, enabled=False):
            return F.linear(F.normalize(embeddings.float()), F.normalize(self.weight.float())).clamp(-1 + 1e-7, 1 - 1e-7)

    def target_logit(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosines(embeddings)
        target = cosine.gather(1, labels[:, None])
        logits = cosine.scatter(1, labels[:, None], self.target_logit(target, embeddings))
        return self.scale * logits


class ArcFace(MarginHead):
    """cos(θ + m) for the own class (Deng et al. 2019): s = 64, m = 0.5.

    Where θ + m would pass π the logit continues as cos θ − m sin m (insightface's fallback),
    keeping it monotonic in θ."""

    def __init__(self, embedding_size: int, classes: int, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__(embedding_size, classes, scale)
        self.margin = margin

    def target_logit(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        m = self.margin
        with_margin = torch.cos(torch.acos(cosine) + m)
        return torch.where(cosine > math.cos(math.pi - m), with_margin, cosine - math.sin(math.pi - m) * m)


class CosFace(MarginHead):
    """cos θ − m for the own class (Wang et al. 2018): s = 64, m = 0.35."""

    def __init__(self, embedding_size: int, classes: int, scale: float = 64.0, margin: float = 0.35) -> None:
        super().__init__(embedding_size, classes, scale)
        self.margin = margin

    def target_logit(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin


class AdaFace(MarginHead):
    """Feature-norm adaptive margin (Kim et al. 2022): s = 64, m = 0.4, h = 0.333, EMA 0.01.

    The embedding norm, standardised by batch statistics kept as an exponential moving
    average and scaled by h, gives r in [-1, 1]; the own-class logit is
    cos(θ − m r) − (m + m r): r = −1 (low norm, low quality) is ArcFace, r = 0 CosFace,
    r = 1 (high quality) a larger additive margin that emphasises hard samples.
    """

    def __init__(self, embedding_size: int, classes: int, scale: float = 64.0, margin: float = 0.4,
                 h: float = 0.333, momentum: float = 0.01) -> None:
        super().__init__(embedding_size, classes, scale)
        self.margin, self.h, self.momentum = margin, h, momentum
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    def quality(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(N, 1) margin scaler r in [-1, 1]; updates the norm statistics in training mode."""
        norms = embeddings.float().norm(dim=1, keepdim=True).clamp(0.001, 100).detach()
        if self.training:
            with torch.no_grad():
                std = norms.std() if len(norms) > 1 else torch.zeros((), device=norms.device)
                self.norm_mean.mul_(1 - self.momentum).add_(self.momentum * norms.mean())
                self.norm_std.mul_(1 - self.momentum).add_(self.momentum * std)
        return ((norms - self.norm_mean) / (self.norm_std + EPS) * self.h).clamp(-1, 1)

    def target_logit(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        r = self.quality(embeddings)
        angle = (torch.acos(cosine) - self.margin * r).clamp(EPS, math.pi - EPS)
        return torch.cos(angle) - (self.margin + self.margin * r)


HEADS = {"arcface": ArcFace, "cosface": CosFace, "adaface": AdaFace}


def build_head(name: str, embedding_size: int, classes: int) -> MarginHead:
    """The margin head ``name`` (a key of ``HEADS``) for ``classes`` identities on ``embedding_size``-D embeddings."""
    if name not in HEADS:
        raise KeyError(f"unknown head {name!r}; known: {', '.join(HEADS)}")
    return HEADS[name](embedding_size, classes)
