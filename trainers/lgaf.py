"""LGAF (Yu et al.): local and global feature attention fusion for occluded / degraded faces.

The backbone's last convolutional map feeds two paths:

* **MHMS** (multi-head multi-scale): ``heads`` heads, each with a 3x3 and a dilated 3x3
  (5x5 field) convolution, a LANet-style spatial attention map and SE channel attention;
  the heads are concatenated and projected to a local embedding.
* **GFE**: the backbone's own global embedding.

**LGF** fuses them per sample: the L2 norms of both embeddings, standardised by batch
statistics (a BatchNorm over the two norms), become softmax weights, so the path whose
feature is stronger (higher quality) for that sample counts more. ``mode`` selects the
ablation: ``local``, ``global``, ``concat`` or ``lgf``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainers.backbones import freeze_embedding
from trainers.heads import build_head
from trainers.loop import both_views

MODES = ("local", "global", "concat", "lgf")


class SpatialAttention(nn.Module):
    """LANet-style: a per-pixel weight in (0, 1) from a 1x1 bottleneck."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.score = nn.Sequential(nn.Conv2d(channels, max(1, channels // reduction), 1), nn.ReLU(inplace=True),
                                   nn.Conv2d(max(1, channels // reduction), 1, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.score(x)


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, max(1, channels // reduction), 1),
                                  nn.ReLU(inplace=True), nn.Conv2d(max(1, channels // reduction), channels, 1),
                                  nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class MultiScaleHead(nn.Module):
    """One MHMS head: 3x3 and dilated 3x3 streams, spatial then channel attention."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.near = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))
        self.far = nn.Sequential(nn.Conv2d(channels, width, 3, padding=2, dilation=2, bias=False), nn.BatchNorm2d(width),
                                 nn.PReLU(width))
        self.spatial = SpatialAttention(2 * width)
        self.channel = ChannelAttention(2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel(self.spatial(torch.cat([self.near(x), self.far(x)], dim=1)))


class MHMS(nn.Module):
    """(N, C, H, W) feature map -> (N, D) local embedding from ``heads`` multi-scale heads."""

    def __init__(self, channels: int, height: int, width: int, embedding_size: int, heads: int = 4) -> None:
        super().__init__()
        head_width = max(8, channels // (2 * heads))
        self.heads = nn.ModuleList(MultiScaleHead(channels, head_width) for _ in range(heads))
        self.project = nn.Sequential(nn.BatchNorm2d(2 * head_width * heads), nn.Flatten(),
                                     nn.Linear(2 * head_width * heads * height * width, embedding_size),
                                     nn.BatchNorm1d(embedding_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([head(features) for head in self.heads], dim=1))


class LocalGlobalFusion(nn.Module):
    """LGF: per-sample softmax weights from batch-standardised embedding norms."""

    def __init__(self) -> None:
        super().__init__()
        self.norm_statistics = nn.BatchNorm1d(2, affine=False)

    def weights(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        """(N, 2) weights (local, global), rows summing to 1."""
        norms = torch.stack([local.float().norm(dim=1), global_.float().norm(dim=1)], dim=1)
        return torch.softmax(self.norm_statistics(norms), dim=1)

    def forward(self, local: torch.Tensor, global_: torch.Tensor) -> torch.Tensor:
        w = self.weights(local, global_).to(local.dtype)
        return w[:, :1] * local + w[:, 1:] * global_


class LGAF(nn.Module):
    """Args:
        backbone: with ``features(x) -> (N, C, H, W)`` and ``embed(features) -> (N, D)``.
        classes: identities; head: margin head name; mode: one of ``MODES``; heads: MHMS heads b.
        feature_shape: (C, H, W) of the backbone's feature map for 112x112 input.
    """

    def __init__(self, backbone: nn.Module, classes: int, feature_shape: tuple[int, int, int], mode: str = "lgf",
                 heads: int = 4, head: str = "arcface") -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown LGAF mode {mode!r}; use one of {', '.join(MODES)}")
        self.backbone, self.mode = freeze_embedding(backbone) if mode == "local" else backbone, mode
        size = backbone.embedding_size
        channels, height, width = feature_shape
        self.local = MHMS(channels, height, width, size, heads) if mode != "global" else None
        self.fusion = LocalGlobalFusion() if mode == "lgf" else None
        self.embedding_size = 2 * size if mode == "concat" else size
        self.head = build_head(head, self.embedding_size, classes)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 112, 112) in [0, 1] -> the mode's embedding."""
        features = self.backbone.features(images)
        if self.mode == "local":
            return self.local(features)
        global_ = self.backbone.embed(features)
        if self.mode == "global":
            return global_
        local = self.local(features)
        return torch.cat([local, global_], dim=1) if self.mode == "concat" else self.fusion(local, global_)

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = both_views(batch)
        loss = F.cross_entropy(self.head(self.embedding(images), labels), labels)
        return loss, {"loss_id": loss.detach()}
