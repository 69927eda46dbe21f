"""fastnet: a network built for training speed, after Keller Jordan's airbench (CIFAR-10 94% in
a few GPU seconds). What makes it fast is named where it is used:

- a first 2x2 convolution fixed to *whiten* the input patches, initialised from the data: the
  network starts from decorrelated inputs, and that layer needs no training (its bias trains
  for the first epochs only);
- three conv groups (conv, max-pool, BN, GELU, conv, BN, GELU): pooling early keeps FLOPs low;
- batch norm without a learnt scale and with a short memory (momentum 0.4), identity ("dirac")
  initialisation of the convolutions so each group starts close to a pass-through;
- the logits scaled down (x 1/9), which together with label smoothing keeps them calibrated.
The training side of the recipe (Nesterov SGD with a triangular schedule, lookahead, alternating
flips, translate by 2 px, flip-and-translate at test time) lives in ``recipe`` below and in the
trainer.
"""

from __future__ import annotations

import torch
from torch import nn

from camscope.models.registry import register


class _BN(nn.BatchNorm2d):
    def __init__(self, width: int, momentum: float = 0.6):
        super().__init__(width, eps=1e-12, momentum=1 - momentum)
        self.weight.requires_grad_(False)  # no learnt scale: BN followed by GELU only needs a shift


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BN(cout, momentum)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = _BN(cout, momentum)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            w = conv.weight.data
            nn.init.dirac_(w[: w.size(1)])  # the first in-channels pass straight through

    def forward(self, x):
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module):
    head_name = "head"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths=(64, 256, 256),
        whiten_kernel: int = 2,
        bn_momentum: float = 0.6,
        scale: float = 1 / 9,
    ):
        super().__init__()
        self.whiten_kernel = whiten_kernel
        wc = 2 * in_channels * whiten_kernel**2
        self.whiten = nn.Conv2d(in_channels, wc, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.act = nn.GELU()
        groups, c = [], wc
        for w in widths:
            groups.append(ConvGroup(c, w, bn_momentum))
            c = w
        self.layers = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c, num_classes, bias=False)
        self.scale = scale
        self.register_buffer("whitened", torch.zeros((), dtype=torch.bool))

    def forward(self, x):
        x = self.layers(self.act(self.whiten(x)))
        return self.head(self.pool(x).flatten(1)) * self.scale

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the first layer to whiten ``images`` (normalised float N x C x H x W) patches.

        Its filters are the eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), and
        their negatives (so GELU passes both signs).
        """
        k = self.whiten_kernel
        c = images.shape[1]
        patches = images.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, c, k, k).float()
        flat = patches.reshape(len(patches), -1)
        flat = flat - flat.mean(0, keepdim=True)
        cov = flat.T @ flat / len(flat)
        eigval, eigvec = torch.linalg.eigh(cov)
        filters = (eigvec.T / torch.sqrt(eigval.clamp_min(0) + eps)[:, None]).reshape(-1, c, k, k).flip(0)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
        self.whitened.fill_(True)

    def set_epoch(self, epoch: int, whiten_bias_epochs: int) -> None:
        """The whitening bias learns for the first epochs only; after that it is frozen."""
        self.whiten.bias.requires_grad_(epoch < whiten_bias_epochs)

    def param_groups(self) -> list[dict]:
        """BN shifts learn ``lr_mult`` times faster, with that much less weight decay."""
        biases = [p for n, p in self.named_parameters() if "norm" in n and p.requires_grad]
        ids = {id(p) for p in biases}
        rest = [
            p
            for n, p in self.named_parameters()
            if id(p) not in ids and (p.requires_grad or n == "whiten.bias")
        ]
        return [{"params": biases, "lr_mult": 64.0, "wd_mult": 1 / 64}, {"params": rest}]


# airbench94's hyperparameters, rewritten for a mean (not summed) loss at batch 1024:
# lr 11.5 / (1 + 1/(1 - 0.85)) = 1.5 and decay 0.0153 / 7.67 / 1.5 = 1.33e-3 per step, biases x64.
RECIPE = {
    "optimizer": "sgd",
    "nesterov": True,
    "momentum": 0.85,
    "lr": 1.5,
    "weight_decay": 1.33e-3,
    "batch_size": 1024,
    "epochs": 10,
    "schedule": "triangle",
    "schedule_args": {"start": 0.2, "peak": 0.23, "end": 0.07},
    "label_smoothing": 0.2,
    "lookahead": True,
    "translate": 2,
    "flip": "alternating",
    "cutout": 0,
    "tta": "flip_translate",
    "whiten_bias_epochs": 3,
    "normalize": True,
}


@register(
    "fastnet",
    cam_layer="layers.2",
    description="airbench-style speed network: data-whitened 2x2 stem, 3 BN conv groups, lookahead recipe",
    recipe=RECIPE,
)
def fastnet(num_classes: int, in_channels: int = 3, image_size=(32, 32), widths=(64, 256, 256), **kw):
    return FastNet(num_classes, in_channels, tuple(widths), **kw)
