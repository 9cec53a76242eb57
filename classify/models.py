"""Classifier architectures (no torchvision), their registry, and checkpoint loading.

Every model takes single-channel images N×1×S×S in [-1, 1] at any S ≥ 32 (adaptive pooling
before the classifier; InceptionV3's unpadded convs need S ≥ 75, or ≥ 107 with its aux head), exposes `features(x)` (penultimate activations: the embedding used for
t-SNE and echo-specific Fréchet distances) and returns view logits from `forward(x)`. A model
may carry a second head, `grade`, a 0–10 image-quality regression (CACTUS).

The layer layouts follow the reference ImageNet models exactly, so built with 3 input channels
and 1,000 classes they have the published parameter counts (VGG16 138,357,544; ResNet18
11,689,512; DenseNet121 7,978,856; MobileNetV2 3,504,872; InceptionV3 23,834,568, with the
auxiliary head 27,161,264).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from echosynth.classify.classifier import Classifier
from echosynth.classify.frozen_features import FrozenInception
from echosynth.classify.settings import inception_min_size, min_image_size
from echosynth.gen.core.io import read_json

# ----------------------------------------------------------------------------------------------
# Shared initialisation (the base class, Classifier, is in classify/classifier.py)


def _init_weights(model: nn.Module) -> None:
    """From-scratch init of the reference implementations (Kaiming conv, small normal linear)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class PooledClassifier(Classifier):
    """A classifier whose encoder is its `body` then global average pooling (DenseNet121, MobileNetV2, SmallCNN)."""

    body: nn.Module

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1)


# ----------------------------------------------------------------------------------------------
# VGG16 (Simonyan & Zisserman 2015)

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(Classifier):
    """VGG16: 13 3×3 convs in five pooled blocks, 7×7 adaptive pool, 4,096-4,096 MLP."""

    def __init__(self, num_classes: int, in_channels: int = 1, batch_norm: bool = False, dropout: float = 0.5):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for v in VGG16_LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            layers.append(nn.Conv2d(c, v, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            c = v
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((7, 7))
        self.mlp = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.feature_dim = 4096
        self.head = nn.Linear(4096, num_classes)
        _init_weights(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.body(x)), 1))


# ----------------------------------------------------------------------------------------------
# ResNet18 (He et al. 2016)


class BasicBlock(nn.Module):
    """Two 3×3 convs with an identity (or 1×1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)


class ResNet18(Classifier):
    """ResNet18: 7×7 stem, four stages of two basic blocks (64-128-256-512), global pool."""

    def __init__(self, num_classes: int, in_channels: int = 1):
        super().__init__()
        self.in_channels = in_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages, c = [], 64
        for i, w in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            stages += [BasicBlock(c, w, stride), BasicBlock(w, w, 1)]
            c = w
        self.stages = nn.Sequential(*stages)
        self.feature_dim = 512
        self.head = nn.Linear(512, num_classes)
        _init_weights(self)
        nn.init.kaiming_uniform_(self.head.weight, a=5 ** 0.5)  # torch's Linear default, as the reference

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(self.stages(self.stem(x)), 1), 1)


# ----------------------------------------------------------------------------------------------
# DenseNet121 (Huang et al. 2017)


class DenseLayer(nn.Module):
    """BN-ReLU-1×1 conv (bottleneck) then BN-ReLU-3×3 conv adding `growth` channels."""

    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(inplace=True),
            nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.net(x)], 1)


class DenseNet121(PooledClassifier):
    """DenseNet121: growth 32, blocks (6, 12, 24, 16), transitions halving channels and size."""

    def __init__(self, num_classes: int, in_channels: int = 1, growth: int = 32,
                 blocks: tuple[int, ...] = (6, 12, 24, 16), init: int = 64, bn_size: int = 4):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, init, 7, 2, 3, bias=False), nn.BatchNorm2d(init), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        ]
        c = init
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth, bn_size))
                c += growth
            if i != len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c // 2, 1, bias=False),
                           nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.head = nn.Linear(c, num_classes)
        _init_weights(self)


# ----------------------------------------------------------------------------------------------
# MobileNetV2 (Sandler et al. 2018)


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    return layers + ([nn.ReLU6(inplace=True)] if act else [])


class InvertedResidual(nn.Module):
    """1×1 expand, 3×3 depthwise, 1×1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = _conv_bn(cin, hidden, 1, 1) if expand != 1 else []
        layers += _conv_bn(hidden, hidden, 3, stride, groups=hidden) + _conv_bn(hidden, cout, 1, 1, act=False)
        self.net = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x) if self.residual else self.net(x)


MOBILENET_V2_LAYOUT = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                       (6, 160, 3, 2), (6, 320, 1, 1))  # (expand, channels, repeats, first stride)


class MobileNetV2(PooledClassifier):
    """MobileNetV2 (width 1.0): inverted residual stages, 1,280-d pooled features."""

    def __init__(self, num_classes: int, in_channels: int = 1, dropout: float = 0.2):
        super().__init__()
        self.in_channels = in_channels
        layers = _conv_bn(in_channels, 32, 3, 2)
        c = 32
        for t, w, n, s in MOBILENET_V2_LAYOUT:
            for i in range(n):
                layers.append(InvertedResidual(c, w, s if i == 0 else 1, t))
                c = w
        layers += _conv_bn(c, 1280, 1, 1)
        self.body = nn.Sequential(*layers)
        self.head_dropout = nn.Dropout(dropout)
        self.feature_dim = 1280
        self.head = nn.Linear(1280, num_classes)
        _init_weights(self)


# ----------------------------------------------------------------------------------------------
# Madani et al. (2018) baseline CNN, as implemented in the Sectra thesis (§2.5.1, §3.4.1)


class Madani(Classifier):
    """Three blocks of two 3×3 convs (BN, ReLU, spatial dropout) + max pool; FC 1028-512.

    The texts give the block structure, the FC widths and "approximately 4 million parameters"
    at 60×80 but not the conv widths: 32-64-128 with a 5×5 adaptive pool gives 4.1 M.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (32, 64, 128),
                 dropout: float = 0.5, conv_dropout: float = 0.1):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                           nn.Dropout2d(conv_dropout)]
                c = w
            layers.append(nn.MaxPool2d(2, 2))
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((5, 5))
        self.mlp = nn.Sequential(
            nn.Linear(c * 25, 1028, bias=False), nn.BatchNorm1d(1028), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(1028, 512, bias=False), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.feature_dim = 512
        self.head = nn.Linear(512, num_classes)
        _init_weights(self)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.flatten(self.pool(self.body(x)), 1))


# ----------------------------------------------------------------------------------------------
# InceptionV3 (Szegedy et al. 2016)


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, as the reference) + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class InceptionA(nn.Module):
    """35×35 grid: 1×1 | 1×1→5×5 | 1×1→3×3→3×3 | avg pool→1×1 (pool_features)."""

    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5 = nn.Sequential(BasicConv2d(cin, 48, 1), BasicConv2d(48, 64, 5, padding=2))
        self.branch3x3dbl = nn.Sequential(BasicConv2d(cin, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                                          BasicConv2d(96, 96, 3, padding=1))
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([self.branch1x1(x), self.branch5x5(x), self.branch3x3dbl(x), pool], 1)


class InceptionB(nn.Module):
    """Grid reduction 35→17: stride-2 3×3 | 1×1→3×3→stride-2 3×3 | max pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl = nn.Sequential(BasicConv2d(cin, 64, 1), BasicConv2d(64, 96, 3, padding=1),
                                          BasicConv2d(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch3x3dbl(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    """17×17 grid with factorised 7×7 convs (1×7 and 7×1) of width c7."""

    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7 = nn.Sequential(BasicConv2d(cin, c7, 1), BasicConv2d(c7, c7, (1, 7), padding=(0, 3)),
                                       BasicConv2d(c7, 192, (7, 1), padding=(3, 0)))
        self.branch7x7dbl = nn.Sequential(
            BasicConv2d(cin, c7, 1), BasicConv2d(c7, c7, (7, 1), padding=(3, 0)),
            BasicConv2d(c7, c7, (1, 7), padding=(0, 3)), BasicConv2d(c7, c7, (7, 1), padding=(3, 0)),
            BasicConv2d(c7, 192, (1, 7), padding=(0, 3)))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return torch.cat([self.branch1x1(x), self.branch7x7(x), self.branch7x7dbl(x), pool], 1)


class InceptionD(nn.Module):
    """Grid reduction 17→8: 1×1→stride-2 3×3 | 1×1→1×7→7×1→stride-2 3×3 | max pool."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = nn.Sequential(BasicConv2d(cin, 192, 1), BasicConv2d(192, 320, 3, stride=2))
        self.branch7x7x3 = nn.Sequential(
            BasicConv2d(cin, 192, 1), BasicConv2d(192, 192, (1, 7), padding=(0, 3)),
            BasicConv2d(192, 192, (7, 1), padding=(3, 0)), BasicConv2d(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x), self.branch7x7x3(x), F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """8×8 grid with expanded filter banks: 3×3 convs split into parallel 1×3 and 3×1."""

    def __init__(self, cin: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b),
                          self.branch_pool(F.avg_pool2d(x, 3, 1, 1))], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17×17 grid: 5×5/3 avg pool, 1×1 conv 128, 5×5 conv 768, linear.

    The reference pool gives 5×5 from a 299-px input's 17×17 grid; smaller grids (from inputs
    of 107 to 298 px) are average-pooled adaptively to 5×5 so the 5×5 conv still fits.
    """

    def __init__(self, cin: int, num_classes: int):
        super().__init__()
        self.conv0 = BasicConv2d(cin, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(x, 5, 3) if min(x.shape[-2:]) >= 17 else F.adaptive_avg_pool2d(x, 5)
        x = F.adaptive_avg_pool2d(self.conv1(self.conv0(x)), 1)
        return self.fc(torch.flatten(x, 1))


class InceptionV3(Classifier):
    """InceptionV3: stem, 3× InceptionA, B, 4× C, D, 2× E, global pool, dropout 0.5; optional aux head.

    With `aux_logits`, training-mode `forward` returns (logits, aux logits) and `view_loss` adds
    0.4 × the auxiliary cross-entropy (torchvision's recipe); in eval mode only logits come back.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, aux_logits: bool = False, dropout: float = 0.5):
        super().__init__()
        self.in_channels = in_channels
        self.min_size = inception_min_size(aux_logits)
        self.stem = nn.Sequential(
            BasicConv2d(in_channels, 32, 3, stride=2), BasicConv2d(32, 32, 3), BasicConv2d(32, 64, 3, padding=1),
            nn.MaxPool2d(3, 2), BasicConv2d(64, 80, 1), BasicConv2d(80, 192, 3), nn.MaxPool2d(3, 2))
        self.mixed_17 = nn.Sequential(
            InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64), InceptionB(288),
            InceptionC(768, 128), InceptionC(768, 160), InceptionC(768, 160), InceptionC(768, 192))
        self.aux = InceptionAux(768, num_classes) if aux_logits else None
        self.mixed_8 = nn.Sequential(InceptionD(768), InceptionE(1280), InceptionE(2048))
        self.head_dropout = nn.Dropout(dropout)
        self.feature_dim = 2048
        self.head = nn.Linear(2048, num_classes)
        _init_weights(self)

    def _size_check(self, x: torch.Tensor) -> None:
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"InceptionV3{' with the aux head' if self.aux is not None else ''} needs inputs of at "
                             f"least {self.min_size}×{self.min_size} px, got {x.shape[-2]}×{x.shape[-1]}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self._size_check(x)
        return torch.flatten(F.adaptive_avg_pool2d(self.mixed_8(self.mixed_17(self.stem(x))), 1), 1)

    def forward(self, x: torch.Tensor, with_grade: bool = False):
        """Logits (and grade, as `Classifier.forward`); training with the aux head: (logits, aux logits)."""
        if self.aux is None or not self.training or with_grade:
            return super().forward(x, with_grade)
        self._check(x)
        self._size_check(x)
        g17 = self.mixed_17(self.stem(x))
        f = torch.flatten(F.adaptive_avg_pool2d(self.mixed_8(g17), 1), 1)
        return self.head(self.head_dropout(f)), self.aux(g17)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the heads (the auxiliary head included)."""
        aux = {id(p) for p in self.aux.parameters()} if self.aux is not None else set()
        return [p for p in super().encoder_parameters() if id(p) not in aux]


AUX_LOSS_WEIGHT = 0.4


def view_loss(out, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of view logits; for (logits, aux logits) adds 0.4 × the auxiliary term (InceptionV3)."""
    if isinstance(out, tuple):
        logits, aux = out
        return (F.cross_entropy(logits.float(), y, weight=weight)
                + AUX_LOSS_WEIGHT * F.cross_entropy(aux.float(), y, weight=weight))
    return F.cross_entropy(out.float(), y, weight=weight)


class SmallCNN(PooledClassifier):
    """A cheap CPU classifier for 32-px demos: blocks of two 3×3 convs (BN, ReLU) + max pool, global average pool.

    Not a thesis architecture: the `quick` preset uses it because its measured curve reaches the same
    plateau as ResNet18 at 32 px in a fraction of the time (benchmarks/classify_curve.py).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                c = w
            layers.append(nn.MaxPool2d(2, 2))
        self.body = nn.Sequential(*layers)
        self.feature_dim = c
        self.head = nn.Linear(c, num_classes)
        _init_weights(self)


# ----------------------------------------------------------------------------------------------
# Registry and construction

MODELS: dict[str, Callable[..., Classifier]] = {
    "vgg16": lambda num_classes, in_channels=1: VGG(num_classes, in_channels),
    "vgg16_bn": lambda num_classes, in_channels=1: VGG(num_classes, in_channels, batch_norm=True),
    "resnet18": ResNet18,
    "densenet121": DenseNet121,
    "mobilenet_v2": MobileNetV2,
    "madani": Madani,
    "small_cnn": SmallCNN,
    "inception_v3": InceptionV3,
    "inception_v3_aux": lambda num_classes, in_channels=1: InceptionV3(num_classes, in_channels, aux_logits=True),
    # Frozen ImageNet features (the offline FID Inception) under a trained head: classify/frozen_features.py
    "fid_inception_frozen": lambda num_classes, in_channels=1: _frozen(num_classes, in_channels, "linear"),
    "fid_inception_frozen_mlp": lambda num_classes, in_channels=1: _frozen(num_classes, in_channels, "mlp"),
}


def _frozen(num_classes: int, in_channels: int, head: str) -> Classifier:
    return FrozenInception(num_classes, in_channels, head=head)


def build_classifier(arch: str, num_classes: int, image_size: int, in_channels: int = 1,
                grade_head: bool = False) -> Classifier:
    """Build a registered architecture for `image_size`-px inputs (checked: ≥ 32, InceptionV3 ≥ 75 / 107 with aux)."""
    if arch not in MODELS:
        raise ValueError(f"unknown architecture {arch!r}; choose one of: {', '.join(MODELS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    if image_size < min_image_size(arch):
        raise ValueError(f"image_size {image_size} is too small for {arch}: use at least {min_image_size(arch)} px")
    model = MODELS[arch](num_classes, in_channels=in_channels)
    model.image_size = image_size
    if grade_head:
        model.add_grade_head()
    return model




def model_info(arch: str, classes: list[str], image_size: int, in_channels: int = 1,
               grade_head: bool = False, **extra) -> dict:
    """The `model.json` record that `load_classifier` rebuilds a model from."""
    return {"arch": arch, "num_classes": len(classes), "classes": list(classes), "image_size": image_size,
            "in_channels": in_channels, "heads": ["view", "grade"] if grade_head else ["view"], **extra}


def resolve_seed_dir(path: str | os.PathLike) -> Path:
    """RUN (→ its first seed-* directory) or RUN/seed-<s> → the directory holding model.json."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    seeds = sorted((p for p in path.glob("seed-*") if (p / "model.json").is_file()),
                   key=lambda p: int(p.name.split("-", 1)[1]) if p.name.split("-", 1)[1].isdigit() else 1 << 30)
    if not seeds:
        raise FileNotFoundError(f"{path}: no model.json here or in a seed-*/ subdirectory; "
                                "pass a classifier run made by classify/train.py")
    return seeds[0]


def load_classifier(path: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
                    ) -> tuple[Classifier, dict]:
    """Load a trained classifier (eval mode) and its model.json info from RUN or RUN/seed-<s>."""
    from safetensors.torch import load_file

    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    seed_dir = resolve_seed_dir(path)
    info = read_json(seed_dir / "model.json")
    ckpt = seed_dir / "checkpoints" / f"{which}.safetensors"
    if not ckpt.is_file():
        raise FileNotFoundError(f"{ckpt}: checkpoint not found (training not finished?)")
    model = build_classifier(info["arch"], info["num_classes"], info["image_size"], info.get("in_channels", 1),
                        grade_head="grade" in info.get("heads", []))
    model.load_state_dict(load_file(str(ckpt)))
    model.to(device).eval()
    return model, {**info, "seed_dir": str(seed_dir), "checkpoint": str(ckpt)}
