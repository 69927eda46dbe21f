"""The training loop: prepared tensors in, checkpoints and metrics out.

Everything random in a step (batch order, augmentation, dropout) is derived from (seed, epoch,
step), so a run resumed from a mid-epoch checkpoint replays exactly what an uninterrupted run
does, and the processes of a distributed run agree on the global batch without talking.

``_train`` is the whole loop on one screen; the steps it calls are below it, in the order they run.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from camscope import __version__
from camscope.errors import CamscopeError
from camscope.folders import run_folder
from camscope.geometry import Geometry, distance_map
from camscope.models import build_model
from camscope.models.checkpoint import load_checkpoint, optimizer_state, save_checkpoint
from camscope.models.inference import Preprocess, logits_and_features, predict_logits
from camscope.models.registry import is_timm_backbone
from camscope.progress import make_progress
from camscope.scores import macro_f1
from camscope.train.augment import Augment
from camscope.train.config import TrainConfig
from camscope.train.data import TrainData, dataset_file
from camscope.train.distributed import DistInfo, any_true, barrier, init_distributed, shutdown, sync_buffers
from camscope.train.optim import Lookahead, freeze_bn_if_frozen, make_optimizer, set_trainable
from camscope.train.probe import fit_linear_head
from camscope.train.runlog import RunLog, plot_learning_curve
from camscope.train.schedules import lr_multiplier
from camscope.utils import atomic_write_text


class NonFiniteLoss(CamscopeError):
    pass


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict]
    best: dict | None
    stopped_early: bool
    model: nn.Module
    seconds: float


@dataclass
class EpochSums:
    """Running training loss and accuracy of this process over the epoch so far."""

    loss: float = 0.0  # summed over images
    correct: float = 0.0
    count: float = 0.0

    def as_list(self) -> list[float]:  # the checkpoint's form
        return [self.loss, self.correct, self.count]


@dataclass
class LoopState:
    """Where a run stands: what a checkpoint's ``position`` and ``history`` restore."""

    epoch: int = 0  # the epoch being run
    step: int = 0  # its next step
    global_step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict | None = None  # {"epoch", "metric", "value"} of the best validation so far
    bad_epochs: int = 0  # epochs since the best one
    elapsed_before: float = 0.0  # training seconds before this process started (less callbacks)
    sums: EpochSums = field(default_factory=EpochSums)
    started: float = field(default_factory=time.perf_counter)  # this process's clock
    epoch_started: float = 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def position(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step,
            "bad_epochs": self.bad_epochs,
            "elapsed_s": self.elapsed(),
            "epoch_sums": self.sums.as_list() if self.step else [0.0, 0.0, 0.0],
        }


@dataclass
class _Setup:
    """Everything fixed while the run trains."""

    cfg: TrainConfig
    data: TrainData
    run: Path
    device: torch.device
    dist: DistInfo
    prep: Preprocess
    model: nn.Module
    ddp_model: nn.Module
    opt: torch.optim.Optimizer
    look: Lookahead | None
    criterion: nn.Module
    aug: Augment
    batch: int
    steps_per_epoch: int
    total_steps: int
    epochs: int
    warmup: int
    channels_last: bool
    amp: torch.dtype | None
    meta: dict  # the checkpoint header's fixed part
    log: RunLog | None = None
    train_x: torch.Tensor | None = None  # on the device
    train_y: torch.Tensor | None = None
    distance: torch.Tensor | None = None  # masked training: distance from the object's centre
    fill: torch.Tensor | None = None  # masked training: the value of hidden pixels (black)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CamscopeError(f"device {name} asked for, but CUDA is not available", "use --device cpu")
    return dev


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
    if dist_info.main:
        run.mkdir(parents=True, exist_ok=True)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
    s = _setup(cfg, data, run, model, device, dist_info)
    state = _resume(s) if resume else LoopState()
    s.log = RunLog(run, dist_info.main, cfg.tensorboard, cfg.mlflow_uri, cfg.model_dump())
    _move_data(s)
    state.started = time.perf_counter()
    stopped_early = False
    progress = make_progress() if dist_info.main else None
    try:
        if cfg.finetune == "probe":  # a linear head on the frozen backbone's features: no epochs
            if not state.history:  # a resumed probe that finished has nothing left to do
                _fit_probe(s, state)
        else:
            task = _start_progress(progress, s, state)
            for epoch in range(state.epoch, s.epochs):
                out_of_time = _train_epoch(s, state, epoch, progress, task)
                stopped_early = _end_epoch(s, state, epoch, on_epoch_end)
                if stopped_early or out_of_time:
                    break
    finally:
        if progress is not None:
            progress.stop()
        s.log.close()
    barrier(dist_info)
    _finish(s, state)
    return TrainResult(run, state.history, state.best, stopped_early, s.model, state.elapsed())


def _setup(cfg: TrainConfig, data: TrainData, run: Path, model, device, dist_info: DistInfo) -> _Setup:
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
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cpu"
    model, prep = _build(cfg, data, model, device, channels_last)
    weight = None
    if cfg.class_weights == "balanced":
        counts = torch.bincount(data.train_y, minlength=k).float()
        weight = (counts.sum() / (k * counts.clamp_min(1))).to(device)
    # the optimizer sees every parameter that may ever learn; frozen ones simply have no grad
    model.camscope_fixed = {name for name, p in model.named_parameters() if not p.requires_grad}
    s = _Setup(
        cfg=cfg,
        data=data,
        run=run,
        device=device,
        dist=dist_info,
        prep=prep,
        model=model,
        ddp_model=model,
        opt=make_optimizer(model, cfg),
        look=Lookahead(model) if cfg.lookahead else None,
        criterion=nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing),
        aug=Augment.from_config(cfg),
        batch=bs,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        epochs=math.ceil(total_steps / steps_per_epoch),
        warmup=round(cfg.warmup_epochs * steps_per_epoch),
        channels_last=channels_last,
        amp=_autocast_dtype(cfg, device),
        meta={},
    )
    s.meta = _meta(s, (c, h, w))
    return s


def _build(cfg, data: TrainData, model, device, channels_last: bool) -> tuple[nn.Module, Preprocess]:
    """The model on its device, and the preprocessing: a pretrained backbone's own normalisation,
    else the training images' mean and spread."""
    torch.manual_seed(cfg.seed)
    n, c, h, w = data.train_x.shape
    if model is None:
        per_side = _sides(cfg, data)
        model = build_model(
            cfg.model, len(data.classes), c, (h, w), weights=cfg.weights, per_side=per_side, **cfg.model_args
        )
    norm = getattr(model, "camscope_norm", None)
    prep = (
        Preprocess(norm["mean"], norm["std"])
        if norm and cfg.normalize
        else Preprocess.from_images(data.train_x, cfg.normalize)
    )
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hasattr(model, "init_from_data"):  # fastnet whitens its input with statistics of 5,000 images
        g = torch.Generator().manual_seed(cfg.seed)
        pick = torch.randperm(n, generator=g)[:5000]
        model.init_from_data(prep(data.train_x[pick].to(device)))
    return model, prep


def _sides(cfg: TrainConfig, data: TrainData) -> int:
    """How many sides a shared backbone sees one by one (0: the joined image as one)."""
    prep = data.prepare_info.get("preprocessing") or {}
    sides = int(prep.get("sides", 1))
    side_by_side = sides >= 2 and prep.get("combine", "side_by_side") == "side_by_side"
    if cfg.two_sided == "auto":
        return sides if side_by_side and cfg.weights and is_timm_backbone(cfg.model) else 0
    if cfg.two_sided == "joined":
        return 0
    if not side_by_side:
        raise CamscopeError(
            "two_sided: per_side needs two-sided objects prepared side by side",
            "prepare with --combine side_by_side, or train with --two-sided joined",
        )
    return sides


def _meta(s: _Setup, chw: tuple[int, int, int]) -> dict:
    """The checkpoint header's fixed part: how to rebuild the model and prepare its inputs."""
    c, h, w = chw
    m, data, cfg = s.model, s.data, s.cfg
    return {
        "camscope_version": __version__,
        "model": m.camscope_spec if hasattr(m, "camscope_spec") else {"name": cfg.model},
        "cam_layer": getattr(m, "camscope_cam_layer", None),
        "head": getattr(m, "camscope_head", None),
        "classes": data.classes,
        "preprocess": {
            **s.prep.to_dict(),
            "channels": c,
            "size": [h, w],
            "tta": cfg.tta,
            "prepared": data.prepare_info.get("preprocessing"),
        },
        "dataset_hash": data.dataset_hash,
        "dataset_file": dataset_file(data.dataset_path, s.run),
        "split": {"file": "split.csv", "digest": data.split_digest},
        "weights": getattr(m, "camscope_weights", None),  # where pretrained weights came from
        "pretrained_cfg": getattr(m, "camscope_pretrained_cfg", None),
        "config": cfg.model_dump(),
        "n_train": len(data.train_y),
        "n_val": len(data.val_y),
        "world_size": s.dist.world,
    }


def _resume(s: _Setup) -> LoopState:
    """The state of ``RUN/last.safetensors``, after checking it was trained on this data and with
    these settings; weights, optimizer and lookahead are restored in place."""
    last = s.run / "last.safetensors"
    if not last.is_file():
        raise CamscopeError(f"nothing to resume in {s.run}", "start the run without --resume")
    ck = load_checkpoint(last)
    if ck.meta.get("dataset_hash") != s.data.dataset_hash:
        raise CamscopeError(
            "the checkpoint was trained on a different prepared dataset",
            "resume with the same prepared file and split, or start a new run folder",
        )
    if (ck.meta.get("split") or {}).get("digest") not in (None, s.data.split_digest):
        raise CamscopeError(
            "the checkpoint was trained on a different split",
            "resume with its split, or start a new run folder",
        )
    old = dict(ck.meta["config"])
    new = s.cfg.model_dump(mode="json")  # tuples become lists, as in the stored JSON
    default = TrainConfig(model=s.cfg.model).model_dump(mode="json")  # options newer than the run
    changed = [
        k
        for k in new
        if k not in ("device", "tensorboard", "mlflow_uri") and old.get(k, default.get(k)) != new[k]
    ]
    if changed:
        raise CamscopeError(
            f"the run was started with different settings ({', '.join(changed[:5])})",
            "resume with the same options, or start a new run folder",
        )
    s.model.load_state_dict(ck.model)
    s.opt.load_state_dict(optimizer_state(ck.optimizer, ck.meta["optimizer_state"]))
    if s.look is not None:
        s.look = Lookahead(s.model, ck.lookahead)
    pos = ck.meta["position"]
    state = LoopState(
        epoch=pos["epoch"],
        step=pos["step_in_epoch"],
        global_step=pos["epoch"] * s.steps_per_epoch + pos["step_in_epoch"],
        history=ck.meta["history"],
        best=ck.meta.get("best"),
        bad_epochs=pos["bad_epochs"],
        elapsed_before=pos.get("elapsed_s", 0.0),
        sums=EpochSums(*pos.get("epoch_sums", [0.0, 0.0, 0.0])),
    )
    if s.dist.main:
        _truncate_log(s.run / "metrics.jsonl", len(state.history))
    return state


def _move_data(s: _Setup) -> None:
    """Wrap the model for DDP and put the training tensors (and masking geometry) on the device."""
    if s.dist.enabled:
        s.ddp_model = nn.parallel.DistributedDataParallel(
            s.model, device_ids=[s.device.index] if s.device.type == "cuda" else None
        )
    if s.cfg.mask_prob > 0:  # masked training hides the object's centre or rim, filled with black
        h, w = s.data.train_x.shape[-2:]
        geom = Geometry.from_prepared(s.data.prepare_info.get("preprocessing"), h, w)
        s.distance = distance_map(geom, device=s.device)
        s.fill = s.prep(torch.zeros(1, s.data.train_x.shape[1], 1, 1, dtype=torch.uint8, device=s.device))
    s.train_x = s.data.train_x.to(s.device)
    s.train_y = s.data.train_y.to(s.device)


def _start_progress(progress, s: _Setup, state: LoopState):
    if progress is None:
        return None
    progress.start()
    return progress.add_task("training", total=s.total_steps, completed=state.global_step)


def _train_epoch(s: _Setup, state: LoopState, epoch: int, progress, task) -> bool:
    """Run the epoch's remaining steps; True when the time budget ran out."""
    set_trainable(s.model, s.cfg, epoch)
    perm = torch.randperm(
        len(s.train_x), generator=torch.Generator().manual_seed(_step_seed(s.cfg.seed, epoch, 0, 7))
    )
    s.ddp_model.train()
    freeze_bn_if_frozen(s.model, s.cfg, epoch)
    if not (epoch == state.epoch and state.step):  # a resumed run goes on with its epoch's sums
        state.sums = EpochSums()
    first = state.step if epoch == state.epoch else 0
    state.epoch, state.epoch_started = epoch, time.perf_counter()
    last_ckpt = time.perf_counter()
    for step in range(first, s.steps_per_epoch):
        if state.global_step >= s.total_steps:
            break
        loss, correct, count = _step(s, perm, epoch, step, state.global_step)
        state.global_step += 1
        state.step = step + 1
        _lookahead(s, state.global_step)
        state.sums.loss += loss * count
        state.sums.correct += correct
        state.sums.count += count
        if progress is not None:
            _show(progress, task, s, state, epoch)
        due_steps = s.cfg.checkpoint_every_steps and state.global_step % s.cfg.checkpoint_every_steps == 0
        due_time = time.perf_counter() - last_ckpt >= s.cfg.checkpoint_every_s
        if (due_steps or due_time) and step + 1 < s.steps_per_epoch:
            _save(s, state, "last")
            last_ckpt = time.perf_counter()
        if s.cfg.max_train_s is not None and any_true(state.elapsed() >= s.cfg.max_train_s, s.dist):
            return True
    return False


def _step(s: _Setup, perm: torch.Tensor, epoch: int, step: int, global_step: int) -> tuple[float, int, int]:
    """One optimisation step on this process's slice of the global batch: (loss, correct, count)."""
    cfg = s.cfg
    h, w = s.train_x.shape[-2:]
    idx_global = perm[step * s.batch : (step + 1) * s.batch]
    gen = torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, step, 1))
    params = s.aug.draw(idx_global, (h, w), epoch, gen, cfg.seed)  # drawn for the global batch
    mine = slice(s.dist.rank, None, s.dist.world)
    idx = idx_global[mine].to(s.device)
    x = s.aug.apply(s.prep(s.train_x[idx]), params.take(mine), s.distance, s.fill)
    side = _train_side(cfg, global_step, s.total_steps)
    if side is not None and side < min(h, w):  # progressive resizing: early steps at a smaller size
        new = (round(h * side / min(h, w)), round(w * side / min(h, w)))
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False, antialias=True)
    if s.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = s.train_y[idx]
    mult = lr_multiplier(cfg.schedule, global_step, s.total_steps, s.warmup, **cfg.schedule_args)
    for g in s.opt.param_groups:
        g["lr"] = g["base_lr"] * mult
    torch.manual_seed(_step_seed(cfg.seed, epoch, step, 2 + s.dist.rank))  # dropout
    with torch.autocast(s.device.type, dtype=s.amp, enabled=s.amp is not None):
        out = s.ddp_model(x)
        loss = s.criterion(out.float(), y)
    if any_true(not torch.isfinite(loss).item(), s.dist):
        raise NonFiniteLoss(
            f"the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; "
            f"the last good checkpoint is kept in {s.run}",
            "lower the learning rate, add --grad-clip, or check the data for broken images",
        )
    s.opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip:
        nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
    s.opt.step()
    with torch.no_grad():
        return loss.item(), (out.argmax(1) == y).sum().item(), len(y)


def _lookahead(s: _Setup, global_step: int) -> None:
    """airbench's lookahead: pull towards slow weights every k steps, harder as the run ends
    ((step / total)^3), and end on the slow weights."""
    every, total = s.cfg.lookahead_every, s.total_steps
    if s.look is not None and (global_step % every == 0 or global_step == total):
        decay = 1.0 if global_step == total else 0.95**every * (global_step / total) ** 3
        s.look.update(s.model, decay)


def _show(progress, task, s: _Setup, state: LoopState, epoch: int) -> None:
    sums = state.sums
    ips = sums.count * s.dist.world / max(1e-9, time.perf_counter() - state.epoch_started)
    progress.update(
        task,
        advance=1,
        description=f"epoch {epoch + 1}/{s.epochs} loss {sums.loss / sums.count:.3f} "
        f"acc {sums.correct / sums.count:.3f} {ips:,.0f} img/s",
    )


def _end_epoch(s: _Setup, state: LoopState, epoch: int, on_epoch_end) -> bool:
    """Validate, log, keep the best and last checkpoints; True when early stopping says stop."""
    train_s = time.perf_counter() - state.epoch_started
    sums = state.sums
    if s.dist.enabled:
        import torch.distributed as dist

        t = torch.tensor(sums.as_list(), dtype=torch.float64)
        dist.all_reduce(t)
        sums = EpochSums(*t.tolist())
    sync_buffers(s.model, s.dist)
    row = {
        "epoch": epoch + 1,
        "step": state.global_step,
        "lr": s.opt.param_groups[-1]["lr"],
        "train_loss": float(sums.loss / sums.count),
        "train_acc": float(sums.correct / sums.count),
        "epoch_s": round(train_s, 3),
        "images_per_s": round(float(sums.count) / max(train_s, 1e-9), 1),
    }
    row.update(_validate(s))
    row["elapsed_s"] = round(state.elapsed(), 2)
    if on_epoch_end is not None:
        t_cb = time.perf_counter()
        row.update(on_epoch_end(s.model, dict(row)) or {})
        state.elapsed_before -= time.perf_counter() - t_cb  # callbacks are not training time
    state.history.append(row)
    improved = _track_best(s.cfg, state, row, epoch)
    state.epoch, state.step = epoch + 1, 0
    if s.dist.main:
        s.log.epoch(row, state.history)
        if improved:
            _save(s, state, "best")
    _save(s, state, "last")
    return s.cfg.patience is not None and state.bad_epochs >= s.cfg.patience


def _validate(s: _Setup) -> dict:
    data = s.data
    if not len(data.val_y):
        return {}
    logits = predict_logits(
        s.model, data.val_x, s.prep, s.cfg.eval_batch_size, s.cfg.tta, s.device, s.channels_last, s.amp
    )
    pred = logits.argmax(1)
    return {
        "val_loss": float(F.cross_entropy(logits, data.val_y)),
        "val_acc": float((pred == data.val_y).float().mean()),
        "val_macro_f1": macro_f1(pred.cpu().numpy(), data.val_y.numpy(), len(data.classes)),
    }


def _track_best(cfg: TrainConfig, state: LoopState, row: dict, epoch: int) -> bool:
    if cfg.monitor not in row:
        return False
    value = row[cfg.monitor]
    lower_is_better = cfg.monitor == "val_loss"
    if state.best is None or (
        value < state.best["value"] if lower_is_better else value > state.best["value"]
    ):
        state.best = {"epoch": epoch + 1, "metric": cfg.monitor, "value": value}
        state.bad_epochs = 0
        return True
    state.bad_epochs += 1
    return False


def _save(s: _Setup, state: LoopState, tag: str) -> None:
    """``last`` carries the optimizer and lookahead for resuming; ``best`` the weights only."""
    if not s.dist.main:
        return
    meta = {**s.meta, "history": state.history, "best": state.best, "position": state.position()}
    if tag == "last":
        save_checkpoint(s.run, "last", s.model, meta, s.opt, s.look.ema if s.look else None)
    else:
        save_checkpoint(s.run, tag, s.model, meta)


def _fit_probe(s: _Setup, state: LoopState) -> None:
    """Fit the head on features computed once (train/probe.py); one row of history, best and last."""
    t0 = time.perf_counter()
    head = getattr(s.model, "camscope_head", "head")
    linear = s.model.get_submodule(head)
    if not isinstance(linear, nn.Linear):
        raise CamscopeError(
            f"the head {head!r} is not a linear layer", "use --finetune head instead of probe"
        )
    data, bs = s.data, s.cfg.eval_batch_size
    _, train_f = logits_and_features(s.model, data.train_x, s.prep, head, bs, s.device)
    val_f = (
        logits_and_features(s.model, data.val_x, s.prep, head, bs, s.device)[1]
        if len(data.val_y)
        else train_f[:0]
    )
    weight = None
    if s.cfg.class_weights == "balanced":
        counts = torch.bincount(data.train_y, minlength=len(data.classes)).float()
        weight = counts.sum() / (len(data.classes) * counts.clamp_min(1))
    fit = fit_linear_head(train_f, data.train_y, val_f, data.val_y, len(data.classes), s.cfg.monitor, weight)
    with torch.no_grad():
        linear.weight.copy_(fit.weight.to(linear.weight))
        linear.bias.copy_(fit.bias.to(linear.bias))
    seconds = time.perf_counter() - t0
    chosen = next(c for c in fit.candidates if c["l2"] == fit.l2)
    row = {
        "epoch": 1,
        "step": 1,
        "lr": 0.0,
        "train_loss": chosen["train_loss"],
        "train_acc": chosen["train_acc"],
        "epoch_s": round(seconds, 3),
        "images_per_s": round(len(data.train_y) / max(seconds, 1e-9), 1),
        **_validate(s),
        "elapsed_s": round(state.elapsed(), 2),
        "probe_l2": fit.l2,
    }
    state.history.append(row)
    improved = _track_best(s.cfg, state, row, 0)
    state.epoch, state.step = 1, 0
    if s.dist.main:
        s.log.epoch(row, state.history)
        atomic_write_text(
            s.run / "probe.json", json.dumps({"chosen_l2": fit.l2, "candidates": fit.candidates}, indent=1)
        )
        if improved:
            _save(s, state, "best")
    _save(s, state, "last")


def _finish(s: _Setup, state: LoopState) -> None:
    """End on the best weights (or save the final ones as best when nothing was validated)."""
    if s.cfg.restore_best and state.best is not None and (s.run / "best.safetensors").is_file():
        s.model.load_state_dict(load_checkpoint(s.run / "best.safetensors").model)
    elif state.best is None:
        state.epoch, state.step = s.epochs, 0
        _save(s, state, "best")
    if s.dist.main:
        plot_learning_curve(state.history, s.run / "learning_curve.png")


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "none" or device.type != "cuda":
        # on CPU without bf16 instructions autocast is 2.6x slower (measured), so fp32 it is
        if cfg.amp in ("bf16", "fp16") and device.type != "cuda":
            raise CamscopeError(f"--amp {cfg.amp} is for GPUs", "leave --amp at auto on the CPU")
        return None
    if cfg.amp == "fp16":
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _train_side(cfg: TrainConfig, step: int, total: int) -> int | None:
    """The short side to train at in this step (None: full size)."""
    t = step / max(1, total)
    for until, side in cfg.resize_schedule or []:
        if t < until:
            return int(side)
    return None


def _step_seed(seed: int, epoch: int, step: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step * 101 + salt) % (2**63 - 1)


def _truncate_log(path: Path, rows: int) -> None:
    """A resumed run rewrites the epochs after its checkpoint: drop their lines from the log."""
    if path.is_file():
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)[:rows]
        path.write_text("".join(lines), encoding="utf-8")
