"""The optimizer, lookahead, and which parameters learn when (fine-tuning modes)."""

from __future__ import annotations

import torch
from torch import nn

from camscope.train.config import TrainConfig


class Lookahead:
    """Slow weights every ``k`` steps (Zhang et al. 2019) with airbench's schedule: the pull
    towards the slow copy grows as (step / total)^3 to 0.95^k, and the run ends on the slow copy."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor] | None = None):
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
        if state:
            for k, v in state.items():
                self.ema[k].copy_(v)

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for k, v in model.state_dict().items():
            if k in self.ema:
                self.ema[k].lerp_(v, 1 - decay)
                v.copy_(self.ema[k])


def _param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    if hasattr(model, "param_groups"):
        groups = model.param_groups()
    elif cfg.body_lr_mult != 1.0:  # discriminative: the pretrained body learns slower than the head
        head = getattr(model, "camscope_head", "head")
        named = list(model.named_parameters())
        in_head = [p for n, p in named if _in(n, head)]
        body = [p for n, p in named if not _in(n, head)]
        groups = [{"params": body, "lr_mult": cfg.body_lr_mult}, {"params": in_head}]
    else:
        groups = [{"params": list(model.parameters())}]
    out = []
    for g in groups:
        lr_mult, wd_mult = g.get("lr_mult", 1.0), g.get("wd_mult", 1.0)
        out.append(
            {
                "params": g["params"],
                "lr": cfg.lr * lr_mult,
                "weight_decay": cfg.weight_decay * wd_mult,
                "base_lr": cfg.lr * lr_mult,
            }
        )
    return out


def _in(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


def set_trainable(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """Fine-tuning modes and per-epoch model hooks (fastnet's whitening bias)."""
    if hasattr(model, "set_epoch"):
        model.set_epoch(epoch, cfg.whiten_bias_epochs)
    if cfg.finetune == "full":
        return
    head = getattr(model, "camscope_head", "head")
    body_learns = cfg.finetune == "head_then_full" and epoch >= cfg.unfreeze_epoch
    fixed = getattr(model, "camscope_fixed", set())
    for name, p in model.named_parameters():
        if name not in fixed and not _in(name, head):
            p.requires_grad_(body_learns)


def freeze_bn_if_frozen(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """A frozen body keeps its pretrained BN statistics: its BN layers run in eval mode. With
    ``bn: frozen`` they always do (small batches would replace good statistics by noisy ones)."""
    body_frozen = cfg.finetune == "head" or (cfg.finetune == "head_then_full" and epoch < cfg.unfreeze_epoch)
    if not (body_frozen or cfg.bn == "frozen"):
        return
    head = getattr(model, "camscope_head", "head")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not _in(name, head):
            m.eval()
