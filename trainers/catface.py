"""CATFace (Talemi et al.): soft-biometric guided recognition with self-attention distillation.

Stage 1 (:class:`CATFaceStage1`): a shared backbone feeds a face-recognition branch (AdaFace)
and a soft-biometric branch (one binary classifier per attribute). Self-attention
distillation (SAD) ties the LQ view to the HQ view on the last convolutional features of
both branches: tokens are projected to Q, K, V, A = softmax(Q Kᵀ / √C) V, and the loss is
2 − cos(A_lq, A_hq) − cos(V_lq, V_hq) per branch (the HQ side without gradient).
Loss = λ_FR (= 3) · AdaFace + weighted BCE (male and bald 1, the others 0.5) + SAD.

Stage 2 (:class:`CATFaceStage2`): pooling and classifiers dropped, the frozen branches' maps
fused by ``fusion``: ``none`` (recognition branch only, the baseline), ``concat``, ``add``
or ``catf`` — multi-head cross-attention with queries swapped between branches, MFFNL
(pointwise expand, depth-wise 3x3 / 1x7 / 7x1 streams concatenated with a shortcut,
pointwise project, GELU and BN) and CAF (grouped channel self-attention) — then an
AdaFace head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainers.backbones import freeze_embedding
from trainers.heads import AdaFace
from trainers.loop import both_views

CATFACE_ATTRIBUTES = ("Male", "Bald", "Big Nose", "Chubby", "Narrow Eyes")
ATTRIBUTE_WEIGHTS = {"Male": 1.0, "Bald": 1.0}  # the others 0.5
FACE_RECOGNITION_WEIGHT = 3.0
FUSIONS = ("none", "concat", "add", "catf")


def conv_block(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                         nn.PReLU(channels))


class TokenSelfAttention(nn.Module):
    """Q, K, V by linear projection of the HW tokens of a (N, C, H, W) map; returns (A, V), (N, HW, C) each."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(channels, channels) for _ in range(3))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = features.flatten(2).transpose(1, 2)
        q, k, v = self.query(tokens), self.key(tokens), self.value(tokens)
        attention = torch.softmax(q @ k.transpose(1, 2) / tokens.shape[-1] ** 0.5, dim=-1)
        return attention @ v, v


def sad_loss(lq: tuple[torch.Tensor, torch.Tensor], hq: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """2 − cos(A_lq, A_hq) − cos(V_lq, V_hq), each flattened per sample; mean over the batch."""
    (a_lq, v_lq), (a_hq, v_hq) = lq, hq
    cosine = lambda x, y: F.cosine_similarity(x.flatten(1), y.flatten(1).detach(), dim=1)  # noqa: E731
    return (2 - cosine(a_lq, a_hq) - cosine(v_lq, v_hq)).mean()


def attribute_targets(values: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """(N, len(names)) labels for the classifiers from a batch's attribute columns ``names``.

    When a ``Female`` column is there (LFW's lossy labels), Male is 1 where Male = 1, 0 where
    Female = 1 and unknown (NaN) elsewhere; the column itself is not a classifier.
    """
    if "Female" not in names:
        return values
    male, female = names.index("Male"), names.index("Female")
    resolved = torch.where(values[:, male] == 1, 1.0, torch.where(values[:, female] == 1, 0.0, float("nan")))
    values = values.clone()
    values[:, male] = resolved
    keep = [i for i, n in enumerate(names) if n != "Female"]
    return values[:, keep]


def weighted_bce(logits: torch.Tensor, labels: torch.Tensor, names: tuple[str, ...]) -> torch.Tensor:
    """BCE per attribute, weighted (male and bald 1, others 0.5); unlabelled (NaN) entries are ignored."""
    weights = torch.tensor([ATTRIBUTE_WEIGHTS.get(n, 0.5) for n in names], device=logits.device)
    known = ~torch.isnan(labels)
    losses = F.binary_cross_entropy_with_logits(logits.float(), torch.nan_to_num(labels.float()), reduction="none")
    weighted = losses * weights * known
    return weighted.sum() / known.sum().clamp(min=1)


class CATFaceStage1(nn.Module):
    """Args:
        backbone: with ``features`` -> (N, C, H, W).
        classes: identities; feature_shape: (C, H, W); attributes: names of the attribute columns used.
    """

    def __init__(self, backbone: nn.Module, classes: int, feature_shape: tuple[int, int, int],
                 columns: tuple[str, ...] = CATFACE_ATTRIBUTES, embedding_size: int = 512) -> None:
        super().__init__()
        channels, height, width = feature_shape
        self.backbone, self.columns = freeze_embedding(backbone), tuple(columns)
        self.attributes = tuple(n for n in columns if n != "Female")
        self.recognition_branch, self.attribute_branch = conv_block(channels), conv_block(channels)
        self.embed = nn.Sequential(nn.BatchNorm2d(channels), nn.Flatten(), nn.Linear(channels * height * width, embedding_size),
                                   nn.BatchNorm1d(embedding_size))
        self.head = AdaFace(embedding_size, classes)
        self.classify = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, len(self.attributes)))
        self.recognition_attention = TokenSelfAttention(channels)
        self.attribute_attention = TokenSelfAttention(channels)

    def branches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone.features(images)
        return self.recognition_branch(features), self.attribute_branch(features)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.recognition_branch(self.backbone.features(images)))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        n = len(batch["identity"])
        images, labels = both_views(batch)
        recognition, attribute = self.branches(images)
        identity_loss = F.cross_entropy(self.head(self.embed(recognition), labels), labels)
        targets = attribute_targets(batch["attributes"], self.columns)
        attribute_labels = torch.cat([targets, targets])
        attribute_loss = weighted_bce(self.classify(attribute), attribute_labels, self.attributes)
        distillation = (sad_loss(self.recognition_attention(recognition[n:]), self.recognition_attention(recognition[:n]))
                        + sad_loss(self.attribute_attention(attribute[n:]), self.attribute_attention(attribute[:n])))
        loss = FACE_RECOGNITION_WEIGHT * identity_loss + attribute_loss + distillation
        return loss, {"identity": identity_loss.detach(), "attributes": attribute_loss.detach(),
                      "sad": distillation.detach()}


class MFFNL(nn.Module):
    """Multi-scale feed-forward: pointwise expand, depth-wise 3x3 / 1x7 / 7x1 streams concatenated
    with the expanded shortcut, pointwise project; GELU and BN."""

    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.GELU())
        self.streams = nn.ModuleList([
            nn.Conv2d(hidden, hidden, (3, 3), padding=(1, 1), groups=hidden, bias=False),
            nn.Conv2d(hidden, hidden, (1, 7), padding=(0, 3), groups=hidden, bias=False),
            nn.Conv2d(hidden, hidden, (7, 1), padding=(3, 0), groups=hidden, bias=False),
        ])
        self.project = nn.Sequential(nn.GELU(), nn.Conv2d(4 * hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expanded = self.expand(x)
        return x + self.project(torch.cat([expanded] + [stream(expanded) for stream in self.streams], dim=1))


class CAF(nn.Module):
    """Grouped channel self-attention: channels are tokens (of dimension HW), attending only
    within their group of C / groups channels."""

    def __init__(self, channels: int, groups: int = 4) -> None:
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.groups = groups
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.reshape(n, self.groups, c // self.groups, h * w)
        attention = torch.softmax(tokens @ tokens.transpose(-1, -2) / (h * w) ** 0.5, dim=-1)
        return x + self.gamma * (attention @ tokens).reshape(n, c, h, w)


class CATF(nn.Module):
    """Cross-attention with swapped queries, MFFNL per branch, summed, then CAF."""

    def __init__(self, channels: int, heads: int = 4, groups: int = 4) -> None:
        super().__init__()
        self.recognition_from_attributes = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.attributes_from_recognition = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.recognition_ffn, self.attribute_ffn = MFFNL(channels), MFFNL(channels)
        self.channel_attention = CAF(channels, groups)

    def forward(self, recognition: torch.Tensor, attribute: torch.Tensor) -> torch.Tensor:
        n, c, h, w = recognition.shape
        r, a = (t.flatten(2).transpose(1, 2) for t in (recognition, attribute))
        r_out = r + self.recognition_from_attributes(a, r, r, need_weights=False)[0]  # queries from the other branch
        a_out = a + self.attributes_from_recognition(r, a, a, need_weights=False)[0]
        to_map = lambda t: t.transpose(1, 2).reshape(n, c, h, w)  # noqa: E731
        fused = self.recognition_ffn(to_map(r_out)) + self.attribute_ffn(to_map(a_out))
        return self.channel_attention(fused)


class CATFaceStage2(nn.Module):
    """Fusion training on a frozen stage-1 model (its backbone and branches)."""

    def __init__(self, stage1: CATFaceStage1, classes: int, feature_shape: tuple[int, int, int], fusion: str = "catf",
                 embedding_size: int = 512) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion {fusion!r}; use one of {', '.join(FUSIONS)}")
        channels, height, width = feature_shape
        self.stage1, self.fusion = stage1.requires_grad_(False), fusion
        self.backbone = stage1.backbone
        self.catf = CATF(channels) if fusion == "catf" else None
        fused_channels = 2 * channels if fusion == "concat" else channels
        self.embed = nn.Sequential(nn.BatchNorm2d(fused_channels), nn.Flatten(),
                                   nn.Linear(fused_channels * height * width, embedding_size), nn.BatchNorm1d(embedding_size))
        self.head = AdaFace(embedding_size, classes)

    def train(self, mode: bool = True) -> CATFaceStage2:
        super().train(mode)
        self.stage1.eval()
        return self

    def fused(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            recognition, attribute = self.stage1.branches(images)
        if self.fusion == "none":
            return recognition
        if self.fusion == "concat":
            return torch.cat([recognition, attribute], dim=1)
        if self.fusion == "add":
            return recognition + attribute
        return self.catf(recognition, attribute)

    def embedding(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.fused(images))

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images, labels = both_views(batch)
        loss = F.cross_entropy(self.head(self.embedding(images), labels), labels)
        return loss, {"identity": loss.detach()}
