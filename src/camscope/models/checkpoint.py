"""Checkpoints: safetensors (tensors only, so loading one cannot run code) plus a JSON sidecar.

The JSON document (model name and arguments, classes, preprocessing, metric history, dataset
hash, training position) is stored twice: inside the safetensors header, which is what loading
reads, so weights and description can never disagree, and beside it as ``<tag>.json`` for
people and tools. Both files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from camscope.errors import CamscopeError
from camscope.utils import atomic_write_bytes, atomic_write_text

SCHEMA = "camscope.checkpoint/1"


@dataclass
class Checkpoint:
    meta: dict
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]  # flattened optimizer state ("optim.<param>.<key>")
    lookahead: dict[str, torch.Tensor]


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for pid, st in state["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"params": g["params"]} for g in state["param_groups"]
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


def optimizer_state(tensors: dict[str, torch.Tensor], info: dict) -> dict:
    """Rebuild a torch optimizer state dict from its flattened form."""
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, pid, k = key.split(".", 2)
        state.setdefault(int(pid), {})[k] = v
    for key, v in info.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    tag: str,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    lookahead: dict[str, torch.Tensor] | None = None,
) -> Path:
    run = Path(run_dir)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"schema": SCHEMA, **meta}
    if optimizer is not None:
        opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
        tensors.update(opt_tensors)
        meta["optimizer_state"] = opt_info
    for k, v in (lookahead or {}).items():
        tensors[f"lookahead.{k}"] = v.detach().cpu().contiguous()
    text = json.dumps(meta, ensure_ascii=False, default=_json_default)
    atomic_write_bytes(run / f"{tag}.safetensors", save(tensors, metadata={"camscope": text}))
    atomic_write_text(run / f"{tag}.json", json.dumps(json.loads(text), indent=1, ensure_ascii=False))
    return run / f"{tag}.safetensors"


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def checkpoint_file(path: str | Path) -> Path:
    """A checkpoint file, or ``best``/``last`` from a run folder (best first)."""
    p = Path(path)
    if p.is_dir():
        for tag in ("best", "last"):
            if (p / f"{tag}.safetensors").is_file():
                return p / f"{tag}.safetensors"
        raise CamscopeError(f"no checkpoint in {p}", "train a model there first with `camscope train`")
    if not p.is_file():
        raise CamscopeError(f"checkpoint {p} not found", "give a run folder or its best/last.safetensors")
    return p


def _read(p: Path, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    try:
        with safe_open(str(p), framework="pt") as f:
            header = (f.metadata() or {}).get("camscope")
            # safe_open has no items()
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CamscopeError(f"{p} is not a readable checkpoint: {e}", "re-run or resume the training") from e
    if not header:
        raise CamscopeError(f"{p} has no camscope metadata", "it was not written by camscope train")
    return json.loads(header), data


def read_meta(path: str | Path) -> dict:
    """The description stored in a checkpoint's header, without reading its tensors."""
    return _read(checkpoint_file(path), tensors=False)[0]


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint file, or ``best``/``last`` from a run folder (best first)."""
    meta, tensors = _read(checkpoint_file(path), tensors=True)
    parts: dict[str, dict[str, torch.Tensor]] = {"model": {}, "optim": {}, "lookahead": {}}
    for k, v in tensors.items():
        kind, _, rest = k.partition(".")
        if kind == "optim":
            parts["optim"][k] = v
        elif kind in parts:
            parts[kind][rest] = v
    return Checkpoint(meta, parts["model"], parts["optim"], parts["lookahead"])


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint metadata, Preprocess) from a checkpoint or a run folder."""
    from camscope.models import build_model
    from camscope.models.inference import Preprocess

    ck = load_checkpoint(path)
    spec = ck.meta.get("model") or {}
    if "num_classes" not in spec:
        raise CamscopeError(
            f"{path} does not say how to rebuild its model", "it was trained with a custom model"
        )
    model = build_model(
        spec["name"],
        spec["num_classes"],
        spec["in_channels"],
        tuple(spec["image_size"]),
        **spec.get("kwargs", {}),
    )
    try:
        missing, unexpected = model.load_state_dict(ck.model, strict=False)
    except RuntimeError as e:  # shapes that do not match the architecture the sidecar names
        first = str(e).split("\n\t", 1)[-1].split("\n")[0]
        raise CamscopeError(
            f"the weights in {path} do not fit {spec['name']}: {first}",
            "the sidecar names another architecture than the weights were trained with",
        ) from None
    if missing or unexpected:
        raise CamscopeError(
            f"the weights in {path} do not fit {spec['name']}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected",
            "the checkpoint may come from another camscope version",
        )
    pp = ck.meta["preprocess"]
    return model.to(device).eval(), ck.meta, Preprocess(pp["mean"], pp["std"])
