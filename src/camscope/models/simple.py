"""The two classic baselines: a shallow CNN (grayscale or RGB) and a deep VGG-style RGB CNN."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from camscope.models.registry import register


class Classifier(nn.Module):
    """features -> global average pooling -> dropout -> linear head."""

    head_name = "head"

    def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.dropout(self.pool(self.features(x)).flatten(1)))


@register(
    "gray_cnn",
    cam_layer="features.relu3",
    description="shallow baseline: 3 x (conv3x3 + ReLU [+ max-pool]), GAP, dropout, linear; 1 or 3 channels",
    recipe={
        "optimizer": "adamw",
        "lr": 2e-3,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "epochs": 30,
        "batch_size": 128,
        "warmup_epochs": 1.0,
    },
)
def gray_cnn(num_classes: int, in_channels: int = 1, image_size=(32, 32), widths=(32, 64, 128), dropout=0.5):
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i, w in enumerate(widths, 1):
        layers[f"conv{i}"] = nn.Conv2d(c, w, 3, padding=1)
        layers[f"relu{i}"] = nn.ReLU()
        if i < len(widths):  # the last map keeps its resolution for the CAMs
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        c = w
    return Classifier(nn.Sequential(layers), c, num_classes, dropout)


@register(
    "deep_cnn",
    cam_layer="features.stage4",
    description="classic deep RGB CNN: 32-64-128-256 filters, two conv3x3 per stage, dropout, optional BN",
    recipe={
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 5e-4,
        "schedule": "cosine",
        "epochs": 40,
        "batch_size": 128,
        "warmup_epochs": 1.0,
        "patience": 8,
    },
)
def deep_cnn(
    num_classes: int,
    in_channels: int = 3,
    image_size=(32, 32),
    widths=(32, 64, 128, 256),
    dropout=(0.1, 0.2, 0.3, 0.4),
    batch_norm: bool = True,
    head_dropout: float = 0.5,
):
    if isinstance(dropout, (int, float)):
        dropout = (float(dropout),) * len(widths)
    stages: OrderedDict[str, nn.Module] = OrderedDict()
    c = in_channels
    for i, (w, p) in enumerate(zip(widths, dropout, strict=True), 1):
        block: list[nn.Module] = []
        for k in range(2):
            block.append(nn.Conv2d(c if k == 0 else w, w, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                block.append(nn.BatchNorm2d(w))
            block.append(nn.ReLU())
        stages[f"stage{i}"] = nn.Sequential(*block)
        if i < len(widths):  # no pooling after the last stage: CAMs keep a usable resolution
            stages[f"pool{i}"] = nn.MaxPool2d(2)
        stages[f"drop{i}"] = nn.Dropout(p)
        c = w
    return Classifier(nn.Sequential(stages), c, num_classes, head_dropout)
