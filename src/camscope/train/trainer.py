"""The training loop: prepared tensors in, checkpoints and metrics out.

Everything random in a step (batch order, augmentation, dropout) is derived from (seed, epoch,
step), so a run resumed from a mid-epoch checkpoint replays exactly what an uninterrupted run
does, and the processes of a distributed run agree on the global batch without talking.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from camscope import __version__
from camscope.data.channels import to_channels
from camscope.data.prepare import PreparedDataset, dataset_hash
from camscope.errors import CamscopeError
from camscope.folders import run_folder
from camscope.models import build_model
from camscope.models.checkpoint import load_checkpoint, optimizer_state, save_checkpoint
from camscope.models.inference import Preprocess, predict_logits
from camscope.progress import make_progress
from camscope.train import augment
from camscope.train.config import TrainConfig
from camscope.train.distributed import DistInfo, any_true, barrier, init_distributed, shutdown, sync_buffers
from camscope.train.runlog import RunLog, plot_learning_curve
from camscope.train.schedules import lr_multiplier


class NonFiniteLoss(CamscopeError):
    pass


@dataclass
class TrainData:
    """The tensors a run trains on: images already converted to the run's channels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    train_ids: list[str]
    val_ids: list[str]
    dataset_hash: str
    prepare_info: dict = field(default_factory=dict)
    # where the prepared file lies, so later commands can find it without --data
    dataset_path: str | None = None


def select_data(ds: PreparedDataset, split: dict[str, str], channels: int | None = None) -> TrainData:
    """Train and validation tensors from a prepared dataset and a split (id -> split name).

    The model's classes are those present in the training split, in the dataset's order; other
    classes (e.g. held out as 'unseen') never reach the model.
    """
    pos = {i: k for k, i in enumerate(ds.ids)}
    unknown = [i for i in split if i not in pos]
    if len(unknown) == len(split):
        raise CamscopeError(
            "none of the split's ids are in the prepared dataset",
            "make the split from this prepared file: camscope split PREPARED --out RUN",
        )
    tr = [pos[i] for i, s in split.items() if s == "train" and i in pos]
    va = [pos[i] for i, s in split.items() if s == "val" and i in pos]
    if not tr:
        raise CamscopeError("the split has no training items", "check the split fractions")
    labels = ds.labels
    present = sorted(set(labels[tr].tolist()) - {-1})
    if len(present) < 2:
        raise CamscopeError(
            f"the training split holds {len(present)} class(es)", "a classifier needs at least two classes"
        )
    remap = torch.full((len(ds.classes) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(present)] = torch.arange(len(present))
    tr = [i for i in tr if labels[i] >= 0]
    va = [i for i in va if labels[i] >= 0 and remap[labels[i]] >= 0]
    tr_t, va_t = torch.tensor(tr, dtype=torch.long), torch.tensor(va, dtype=torch.long)
    images = ds.images
    return TrainData(
        to_channels(images[tr_t], channels),
        remap[labels[tr_t]],
        to_channels(images[va_t], channels) if va else images[:0],
        remap[labels[va_t]],
        [ds.classes[c] for c in present],
        [ds.ids[i] for i in tr],
        [ds.ids[i] for i in va],
        dataset_hash(ds),
        {k: v for k, v in ds.info.items() if k in ("preprocessing", "source", "schema")},
    )


def _dataset_file(path: str | None, run_dir: str | Path) -> dict | None:
    """The prepared file's absolute path, and its path from the run folder (found again after
    both are moved together)."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        rel = os.path.relpath(p, Path(run_dir).resolve())
    except ValueError:  # another drive on Windows
        rel = None
    return {"path": str(p), "from_run": rel}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CamscopeError(f"device {name} asked for, but CUDA is not available", "use --device cpu")
    return dev


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or device.type != "cuda":
        # on CPU without bf16 instructions autocast is 2.6x slower (measured), so fp32 it is
        if cfg.amp in ("bf16", "fp16") and device.type != "cuda":
            raise CamscopeError(f"--amp {cfg.amp} is for GPUs", "leave --amp at auto on the CPU")
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def macro_f1(pred: torch.Tensor, target: torch.Tensor, k: int) -> float:
    cm = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    present = cm.sum(1) > 0
    return float(f1[present].mean()) if present.any() else 0.0


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best: dict | None
    stopped_early: bool
    model: nn.Module
    seconds: float


class _Lookahead:
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
    groups = (
        model.param_groups() if hasattr(model, "param_groups") else [{"params": list(model.parameters())}]
    )
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


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0
        )
    return torch.optim.AdamW(groups, lr=cfg.lr)


def _set_trainable(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """Fine-tuning modes and per-epoch model hooks (fastnet's whitening bias)."""
    if hasattr(model, "set_epoch"):
        model.set_epoch(epoch, cfg.whiten_bias_epochs)
    if cfg.finetune == "full":
        return
    head = getattr(model, "camscope_head", "head")
    body_learns = cfg.finetune == "head_then_full" and epoch >= cfg.unfreeze_epoch
    fixed = getattr(model, "camscope_fixed", set())
    for name, p in model.named_parameters():
        if name not in fixed and not (name == head or name.startswith(head + ".")):
            p.requires_grad_(body_learns)


def _freeze_bn_if_frozen(model: nn.Module, cfg: TrainConfig, epoch: int) -> None:
    """A frozen body keeps its pretrained BN statistics: its BN layers run in eval mode."""
    if cfg.finetune == "full" or (cfg.finetune == "head_then_full" and epoch >= cfg.unfreeze_epoch):
        return
    head = getattr(model, "camscope_head", "head")
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not name.startswith(head):
            m.eval()


def _train_side(cfg: TrainConfig, step: int, total: int) -> int | None:
    """The short side to train at in this step (None: full size)."""
    t = step / max(1, total)
    for until, side in cfg.resize_schedule or []:
        if t < until:
            return int(side)
    return None


def _step_seed(seed: int, epoch: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + salt) % (2**63 - 1)


def train(
    cfg: TrainConfig,
    data: TrainData,
    run_dir: str | Path,
    resume: bool = False,
    on_epoch_end: Callable[[nn.Module, dict], dict | None] | None = None,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train ``cfg.model`` on ``data``; write checkpoints and logs to ``run_dir``.

    ``on_epoch_end(model, row)`` may return extra numbers for the epoch's row (benchmarks use it
    to follow test accuracy; its time is not counted as training time).
    """
    run = Path(run_dir)
    device = resolve_device(cfg.device)
    dist_info = init_distributed(device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        # rank 0 writes the folder: it must be ours, and no other run may write it meanwhile
        with run_folder(run, "train") if dist_info.main else contextlib.nullcontext():
            return _train(cfg, data, run, resume, on_epoch_end, model, device, dist_info)
    finally:
        shutdown(dist_info)


def _train(cfg, data, run, resume, on_epoch_end, model, device, dist_info: DistInfo) -> TrainResult:
    main = dist_info.main
    if main:
        run.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cpu"
    amp = _autocast_dtype(cfg, device)
    n, c, h, w = data.train_x.shape
    k = len(data.classes)
    bs = cfg.batch_size
    if bs % dist_info.world:
        raise CamscopeError(
            f"batch size {bs} is not divisible by the {dist_info.world} processes",
            f"use a multiple of {dist_info.world}",
        )
    if n < bs:
        bs = n - n % dist_info.world  # a tiny dataset: one step per epoch
    steps_per_epoch = n // bs
    total_steps = max(1, round(cfg.epochs * steps_per_epoch))
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = round(cfg.warmup_epochs * steps_per_epoch)

    prep = Preprocess.from_images(data.train_x, cfg.normalize)
    torch.manual_seed(cfg.seed)
    if model is None:
        model = build_model(cfg.model, k, c, (h, w), weights=cfg.weights, **cfg.model_args)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data"):
        g = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(n, generator=g)[:5000]
        model.init_from_data(prep(data.train_x[pick].to(device)))

    weight = None
    if cfg.class_weights == "balanced":
        counts = torch.bincount(data.train_y, minlength=k).float()
        weight = (counts.sum() / (k * counts.clamp_min(1))).to(device)
    criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)

    # the optimizer sees every parameter that may ever learn; frozen ones simply have no grad
    model.camscope_fixed = {name for name, p in model.named_parameters() if not p.requires_grad}
    opt = _optimizer(model, cfg)
    look = _Lookahead(model) if cfg.lookahead else None

    meta_base = {
        "camscope_version": __version__,
        "model": model.camscope_spec if hasattr(model, "camscope_spec") else {"name": cfg.model},
        "cam_layer": getattr(model, "camscope_cam_layer", None),
        "head": getattr(model, "camscope_head", None),
        "classes": data.classes,
        "preprocess": {
            **prep.to_dict(),
            "channels": c,
            "size": [h, w],
            "tta": cfg.tta,
            "prepared": data.prepare_info.get("preprocessing"),
        },
        "dataset_hash": data.dataset_hash,
        "dataset_file": _dataset_file(data.dataset_path, run),
        "config": cfg.model_dump(),
        "n_train": n,
        "n_val": len(data.val_y),
        "world_size": dist_info.world,
    }
    history: list[dict] = []
    best: dict | None = None
    bad_epochs = 0
    start_epoch, start_step = 0, 0
    sums = torch.zeros(3, dtype=torch.float64)
    resumed_sums = [0.0, 0.0, 0.0]
    elapsed_before = 0.0
    if resume:
        last = run / "last.safetensors"
        if not last.is_file():
            raise CamscopeError(f"nothing to resume in {run}", "start the run without --resume")
        ck = load_checkpoint(last)
        if ck.meta.get("dataset_hash") != data.dataset_hash:
            raise CamscopeError(
                "the checkpoint was trained on a different prepared dataset",
                "resume with the same prepared file and split, or start a new run folder",
            )
        old = dict(ck.meta["config"])
        new = cfg.model_dump(mode="json")  # tuples become lists, as in the stored JSON
        changed = [
            key
            for key in new
            if key not in ("device", "tensorboard", "mlflow_uri") and old.get(key) != new[key]
        ]
        if changed:
            raise CamscopeError(
                f"the run was started with different settings ({', '.join(changed[:5])})",
                "resume with the same options, or start a new run folder",
            )
        model.load_state_dict(ck.model)
        opt.load_state_dict(optimizer_state(ck.optimizer, ck.meta["optimizer_state"]))
        if look is not None:
            look = _Lookahead(model, ck.lookahead)
        pos = ck.meta["position"]
        start_epoch, start_step = pos["epoch"], pos["step_in_epoch"]
        history, best, bad_epochs = ck.meta["history"], ck.meta.get("best"), pos["bad_epochs"]
        elapsed_before = pos.get("elapsed_s", 0.0)
        resumed_sums = pos.get("epoch_sums", [0.0, 0.0, 0.0])
        if main:
            _truncate_log(run / "metrics.jsonl", len(history))

    ddp_model = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    log = RunLog(run, main, cfg.tensorboard, cfg.mlflow_uri, cfg.model_dump())
    dmap = black = None
    if cfg.mask_prob > 0:  # masked training hides the object's centre or rim, filled with black
        from camscope.geometry import Geometry, distance_map

        geom = Geometry.from_prepared(data.prepare_info.get("preprocessing"), h, w)
        dmap = distance_map(geom, device=device)
        black = prep(torch.zeros(1, c, 1, 1, dtype=torch.uint8, device=device))
    train_x = data.train_x.to(device)
    train_y = data.train_y.to(device)
    t_start = time.perf_counter()
    last_ckpt = time.perf_counter()
    stopped_early = False
    out_of_time = False

    def position(epoch: int, step: int) -> dict:
        return {
            "epoch": epoch,
            "step_in_epoch": step,
            "bad_epochs": bad_epochs,
            "elapsed_s": elapsed_before + time.perf_counter() - t_start,
            "epoch_sums": sums.tolist() if step else [0.0, 0.0, 0.0],  # running train loss/acc
        }

    def save_last(epoch: int, step: int) -> None:
        if main:
            meta = {**meta_base, "history": history, "best": best, "position": position(epoch, step)}
            save_checkpoint(run, "last", model, meta, opt, look.ema if look else None)

    progress = make_progress() if main else None
    if progress is not None:
        progress.start()
        task = progress.add_task(
            "training", total=total_steps, completed=start_epoch * steps_per_epoch + start_step
        )
    global_step = start_epoch * steps_per_epoch + start_step
    try:
        for epoch in range(start_epoch, n_epochs):
            _set_trainable(model, cfg, epoch)
            perm = torch.randperm(
                n, generator=torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, 0, 7))
            )
            ddp_model.train()
            _freeze_bn_if_frozen(model, cfg, epoch)
            sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, count (this process)
            if epoch == start_epoch and start_step:
                sums = torch.tensor(resumed_sums, dtype=torch.float64)
            t_epoch = time.perf_counter()
            first = start_step if epoch == start_epoch else 0
            for step in range(first, steps_per_epoch):
                if global_step >= total_steps:
                    break
                idx_global = perm[step * bs : (step + 1) * bs]
                gen = torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, step, 1))
                params = augment.draw(
                    len(idx_global),
                    idx_global,
                    (h, w),
                    epoch,
                    gen,
                    cfg.seed,
                    cfg.translate,
                    cfg.flip,
                    cfg.cutout,
                    cfg.mask_prob,
                    cfg.mask_max,
                )
                mine = slice(dist_info.rank, None, dist_info.world)
                idx = idx_global[mine].to(device)
                x = augment.apply(
                    prep(train_x[idx]), params.take(mine), cfg.translate, cfg.cutout, dmap, black
                )
                side = _train_side(cfg, global_step, total_steps)
                if side is not None and side < min(h, w):
                    new = (round(h * side / min(h, w)), round(w * side / min(h, w)))
                    x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = train_y[idx]
                mult = lr_multiplier(cfg.schedule, global_step, total_steps, warmup, **cfg.schedule_args)
                for g in opt.param_groups:
                    g["lr"] = g["base_lr"] * mult
                torch.manual_seed(_step_seed(cfg.seed, epoch, step, 2 + dist_info.rank))  # dropout
                with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    out = ddp_model(x)
                    loss = criterion(out.float(), y)
                if any_true(not torch.isfinite(loss).item(), dist_info):
                    raise NonFiniteLoss(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
                        f"the last good checkpoint is kept in {run}",
                        "lower the learning rate, add --grad-clip, or check the data for broken images",
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
                global_step += 1
                if look is not None and (
                    global_step % cfg.lookahead_every == 0 or global_step == total_steps
                ):
                    decay = (
                        1.0
                        if global_step == total_steps
                        else 0.95**cfg.lookahead_every * (global_step / total_steps) ** 3
                    )
                    look.update(model, decay)
                with torch.no_grad():
                    sums += torch.tensor(
                        [loss.item() * len(y), (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64
                    )
                if progress is not None:
                    ips = sums[2].item() * dist_info.world / max(1e-9, time.perf_counter() - t_epoch)
                    progress.update(
                        task,
                        advance=1,
                        description=(
                            f"epoch {epoch + 1}/{n_epochs} loss {sums[0] / sums[2]:.3f} "
                            f"acc {sums[1] / sums[2]:.3f} {ips:,.0f} img/s"
                        ),
                    )
                due_steps = cfg.checkpoint_every_steps and global_step % cfg.checkpoint_every_steps == 0
                due_time = time.perf_counter() - last_ckpt >= cfg.checkpoint_every_s
                if (due_steps or due_time) and step + 1 < steps_per_epoch:
                    save_last(epoch, step + 1)
                    last_ckpt = time.perf_counter()
                if cfg.max_train_s is not None and any_true(
                    elapsed_before + time.perf_counter() - t_start >= cfg.max_train_s, dist_info
                ):
                    out_of_time = True
                    break
            train_s = time.perf_counter() - t_epoch
            if dist_info.enabled:
                import torch.distributed as dist

                dist.all_reduce(sums)
            sync_buffers(model, dist_info)
            row = {
                "epoch": epoch + 1,
                "step": global_step,
                "lr": opt.param_groups[-1]["lr"],
                "train_loss": float(sums[0] / sums[2]),
                "train_acc": float(sums[1] / sums[2]),
                "epoch_s": round(train_s, 3),
                "images_per_s": round(float(sums[2]) / max(train_s, 1e-9), 1),
            }
            if len(data.val_y):
                logits = predict_logits(
                    model, data.val_x, prep, cfg.eval_batch_size, cfg.tta, device, channels_last, amp
                )
                pred = logits.argmax(1)
                row["val_loss"] = float(F.cross_entropy(logits, data.val_y))
                row["val_acc"] = float((pred == data.val_y).float().mean())
                row["val_macro_f1"] = macro_f1(pred, data.val_y, k)
            row["elapsed_s"] = round(elapsed_before + time.perf_counter() - t_start, 2)
            if on_epoch_end is not None:
                t_cb = time.perf_counter()
                extra = on_epoch_end(model, dict(row))
                if extra:
                    row.update(extra)
                elapsed_before -= time.perf_counter() - t_cb  # callbacks are not training time
            history.append(row)
            improved = False
            if cfg.monitor in row:
                value = row[cfg.monitor]
                better = (lambda a, b: a < b) if cfg.monitor == "val_loss" else (lambda a, b: a > b)
                if best is None or better(value, best["value"]):
                    best = {"epoch": epoch + 1, "metric": cfg.monitor, "value": value}
                    improved, bad_epochs = True, 0
                else:
                    bad_epochs += 1
            if main:
                log.epoch(row, history)
                if improved:
                    save_checkpoint(
                        run,
                        "best",
                        model,
                        {**meta_base, "history": history, "best": best, "position": position(epoch + 1, 0)},
                    )
            save_last(epoch + 1, 0)
            last_ckpt = time.perf_counter()
            if cfg.patience is not None and bad_epochs >= cfg.patience:
                stopped_early = True
                break
            if out_of_time:
                break
    finally:
        if progress is not None:
            progress.stop()
        log.close()
    barrier(dist_info)
    if cfg.restore_best and best is not None and (run / "best.safetensors").is_file():
        model.load_state_dict(load_checkpoint(run / "best.safetensors").model)
    elif main and best is None:
        # no validation split: the final weights are the ones to use
        save_checkpoint(
            run,
            "best",
            model,
            {**meta_base, "history": history, "best": None, "position": position(n_epochs, 0)},
        )
    if main:
        plot_learning_curve(history, run / "learning_curve.png")
    return TrainResult(
        run, history, best, stopped_early, model, elapsed_before + time.perf_counter() - t_start
    )


def _truncate_log(path: Path, rows: int) -> None:
    """A resumed run rewrites the epochs after its checkpoint: drop their lines from the log."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
        path.write_text("".join(lines), encoding="utf-8")
