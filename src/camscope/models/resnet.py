"""ResNet-18: the CIFAR variant (3x3 stem, no max-pool) for small inputs, torchvision's for large."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from camscope.models.registry import register


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    head_name = "fc"

    def __init__(self, num_classes: int, in_channels: int = 3, blocks=(2, 2, 2, 2), width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        layers, c = [], width
        for i, n in enumerate(blocks):
            w = width * 2**i
            layer = [BasicBlock(c, w, 1 if i == 0 else 2)] + [BasicBlock(w, w, 1) for _ in range(n - 1)]
            layers.append(nn.Sequential(*layer))
            c = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def adapt_first_conv(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of ``conv`` taking ``in_channels`` inputs; grayscale gets the summed RGB filters."""
    if conv.in_channels == in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        w = conv.weight.sum(1, keepdim=True) if in_channels == 1 else conv.weight.mean(1, keepdim=True)
        new.weight.copy_(w.expand(-1, in_channels, -1, -1) / (1 if in_channels == 1 else in_channels / 3))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


@register(
    "resnet18",
    cam_layer="layer4",
    description="ResNet-18: CIFAR stem (3x3 conv, no max-pool) up to 64 px inputs, else torchvision's",
    recipe={
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "schedule": "onecycle",
        "epochs": 30,
        "batch_size": 256,
    },
)
def resnet18(num_classes: int, in_channels: int = 3, image_size=(32, 32), stem: str = "auto"):
    small = min(image_size) <= 64 if stem == "auto" else stem == "cifar"
    if small:
        return CifarResNet(num_classes, in_channels)
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = adapt_first_conv(model.conv1, in_channels)
    model.head_name = "fc"
    return model
