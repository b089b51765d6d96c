"""Face-recognition backbones: IResNet-18/50/100 (insightface layout) and MobileFaceNet.

Every backbone takes (N, 3, 112, 112) RGB in [0, 1] and returns (N, D) embeddings (not
normalised): it normalises to (255 x - 127.5) / 128 itself, and MobileFaceNet crops its
112x96 input (columns 8:104) itself, so callers never care which backbone they hold.
Backbones are registered by name with :func:`register` (timm style) and built by
:func:`build_backbone`, optionally from a checkpoint.

Each backbone is ``prepare`` (normalise, crop) then a pyramid of ``stages`` giving the last
convolutional map (``features``), then ``embed``; BTNet implants its branches between stages.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainers.checkpoints import load_backbone_weights

BACKBONES: dict[str, Callable[[], nn.Module]] = {}
INPUT_SIZE = 112  # the side of the faces every backbone takes (insightface's alignment)


def register(name: str) -> Callable[[Callable[[], nn.Module]], Callable[[], nn.Module]]:
    def decorate(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
        BACKBONES[name] = factory
        return factory

    return decorate


def normalise(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0 - 127.5) / 128.0


def run_stages(stages: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for stage in stages:
        x = stage(x)
    return x


# ---- MobileFaceNet (Chen et al. 2018), parameter names as ../shared/data/weights/mobilefacenet ----


class ConvBlock(nn.Module):
    def __init__(self, inp: int, oup: int, k, s: int, p, dw: bool = False, linear: bool = False) -> None:
        super().__init__()
        self.linear = linear
        self.conv = nn.Conv2d(inp, oup, k, s, p, groups=inp if dw else 1, bias=False)
        self.bn = nn.BatchNorm2d(oup)
        if not linear:
            self.prelu = nn.PReLU(oup)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return x if self.linear else self.prelu(x)


class Bottleneck(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expansion: int) -> None:
        super().__init__()
        self.connect = stride == 1 and inp == oup
        hidden = inp * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.PReLU(hidden),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.PReLU(hidden),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.connect else self.conv(x)


MOBILEFACENET_SETTING = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]


class MobileFaceNet(nn.Module):
    """MobileFaceNet: 112x96 input (cropped from 112x112), 128-D embedding.

    ``features(x)`` gives the last convolutional map (N, 512, 7, 6) for distillation.
    """

    embedding_size = 128
    feature_channels = 512
    crop_columns = (8, 104)  # of a 112-px face: the input is its central 96 columns

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = ConvBlock(3, 64, 3, 2, 1)
        self.dw_conv1 = ConvBlock(64, 64, 3, 1, 1, dw=True)
        blocks, inp = [], 64
        for expansion, channels, repeats, stride in MOBILEFACENET_SETTING:
            for i in range(repeats):
                blocks.append(Bottleneck(inp, channels, stride if i == 0 else 1, expansion))
                inp = channels
        self.blocks = nn.Sequential(*blocks)
        self.conv2 = ConvBlock(128, 512, 1, 1, 0)
        self.linear7 = ConvBlock(512, 512, (7, 6), 1, 0, dw=True, linear=True)
        self.linear1 = ConvBlock(512, 128, 1, 1, 0, linear=True)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images[..., self.crop_columns[0]:self.crop_columns[1]])

    def stages(self) -> list[nn.Module]:
        return [self.conv1, self.dw_conv1, *self.blocks, self.conv2]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return run_stages(self.stages(), self.prepare(images))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear1(self.linear7(features)).flatten(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(images))


@register("mobilefacenet")
def mobilefacenet() -> nn.Module:
    return MobileFaceNet()


# ---- IResNet (insightface arcface_torch layout) ---------------------------------------------


class IBasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """IResNet with insightface's parameter names; 112x112 input, 512-D embedding.

    ``features(x)`` gives the last convolutional map (N, 512, 7, 7).
    """

    embedding_size = 512
    feature_channels = 512
    crop_columns = (0, 112)

    def __init__(self, layers: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.features_bn = nn.BatchNorm1d(512, eps=1e-5)
        nn.init.constant_(self.features_bn.weight, 1.0)
        self.features_bn.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes, eps=1e-5))
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return normalise(images)

    def stages(self) -> list[nn.Module]:
        return [nn.Sequential(self.conv1, self.bn1, self.prelu), self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return run_stages(self.stages(), self.prepare(images))

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bn2(features).flatten(1))
        return self.features_bn(self.fc(x))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.features(images))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Accept insightface checkpoints, whose embedding BatchNorm is named ``features``."""
        state_dict = {k.replace("features.", "features_bn.", 1) if k.startswith("features.") else k: v
                      for k, v in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


@register("iresnet18")
def iresnet18() -> nn.Module:
    return IResNet([2, 2, 2, 2])


@register("iresnet50")
def iresnet50() -> nn.Module:
    return IResNet([3, 4, 14, 3])


@register("iresnet100")
def iresnet100() -> nn.Module:
    return IResNet([3, 13, 30, 3])


def pyramid(backbone: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """The map after each of ``backbone.stages()`` for (N, 3, S, S) faces in [0, 1]; the last is ``features``."""
    x, maps = backbone.prepare(images), []
    for stage in backbone.stages():
        x = stage(x)
        maps.append(x)
    return maps


@torch.no_grad()
def stage_shapes(backbone: nn.Module, size: int = INPUT_SIZE) -> list[tuple[int, int, int]]:
    """(C, H, W) after each of ``backbone.stages()`` for (size, size) input."""
    was_training = backbone.training
    maps = pyramid(backbone.eval(), torch.zeros(1, 3, size, size))
    backbone.train(was_training)
    return [tuple(m.shape[1:]) for m in maps]


def freeze_embedding(backbone: nn.Module) -> nn.Module:
    """``backbone`` with its layers after the last stage (its own ``embed``) frozen, for a model that
    embeds the stage maps itself: every trainable parameter then takes part in each step, as DDP
    requires of each rank (those layers got no gradient; under torchrun the second step failed)."""
    in_stages = {id(parameter) for stage in backbone.stages() for parameter in stage.parameters()}
    for parameter in backbone.parameters():
        if id(parameter) not in in_stages:
            parameter.requires_grad_(False)
    return backbone


def feature_shape(backbone: nn.Module, size: int = INPUT_SIZE) -> tuple[int, int, int]:
    """(C, H, W) of ``backbone.features`` for (size, size) input."""
    return stage_shapes(backbone, size)[-1]


def build_backbone(name: str, checkpoint: str | Path | None = None) -> nn.Module:
    """A registered backbone, with weights from ``checkpoint`` when given (all keys must match)."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    model = BACKBONES[name]()
    if checkpoint is not None:
        load_backbone_weights(model, checkpoint)
    return model
