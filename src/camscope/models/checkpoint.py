"""Checkpoints: safetensors (tensors only, so loading one cannot run code) plus a JSON sidecar.

The JSON document (model name and arguments, classes, preprocessing, metric history, dataset
hash, training position) is stored twice: inside the safetensors header, which is what loading
reads, so weights and description can never disagree, and beside it as ``<tag>.json`` for
people and tools. Both files are written to a temporary name and renamed into place.
"""

from __future__ import annotations

import json
import math
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


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the file's header, without reading a byte of the tensors."""
    p = checkpoint_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as e:
        raise CamscopeError(f"{p} is not a readable checkpoint: {e}", "re-run or resume the training") from e


def model_spec(meta: dict, path) -> dict:
    """The header's recipe for the model, checked for what a rebuild needs."""
    spec = meta.get("model") or {}
    if not isinstance(spec, dict) or "num_classes" not in spec:
        raise CamscopeError(
            f"{path} does not say how to rebuild its model", "it was trained with a custom model"
        )
    classes = meta.get("classes")
    if not isinstance(classes, list) or spec["num_classes"] != len(classes):
        raise CamscopeError(
            f"{path}: its header says {spec['num_classes']!r} classes but names "
            f"{len(classes) if isinstance(classes, list) else 'none'}",
            "the checkpoint's header was edited or damaged; use the checkpoint training wrote",
        )
    return spec


def preprocess_of(meta: dict, path) -> tuple[list[float], list[float]]:
    """The header's input normalisation: a mean and a positive, finite std per channel."""
    pp = meta.get("preprocess")
    try:
        mean, std = [float(v) for v in pp["mean"]], [float(v) for v in pp["std"]]
    except (TypeError, KeyError, ValueError):
        raise CamscopeError(
            f"{path} does not record its input normalisation (preprocess mean and std)",
            "the checkpoint's header was edited or damaged; use the checkpoint training wrote",
        ) from None
    bad = [v for v in std if not (v > 0 and math.isfinite(v))] + [v for v in mean if not math.isfinite(v)]
    if bad or not mean or len(mean) != len(std):
        raise CamscopeError(
            f"{path} records an unusable input normalisation (mean {mean}, std {std}): "
            "dividing by it would turn every image into NaN",
            "the checkpoint's header was edited or damaged; use the checkpoint training wrote",
        )
    return mean, std


def _check_shapes(spec: dict, path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Build the model on the meta device (no memory) and compare its tensors with the file's, so a
    header claiming a billion classes is refused before anything is allocated."""
    from camscope.models import build_model

    try:
        with torch.device("meta"):
            skeleton = build_model(**_build_args(spec))
    except CamscopeError:
        raise
    except Exception:  # noqa: BLE001 - a model that cannot be built on meta is checked when loaded
        return
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k.removeprefix("model."): v for k, v in shapes.items() if k.startswith("model.")}
    for name, shape in want.items():
        if name in have and have[name] != shape:
            raise CamscopeError(
                f"the weights in {path} do not fit {spec['name']}: {name} is {list(have[name])} in the "
                f"file but the header's model needs {list(shape)}",
                "the header was edited or names another architecture; use the checkpoint training wrote",
            )
    _check_names(path, spec, sorted(set(want) - set(have)), sorted(set(have) - set(want)))


def _check_names(path, spec: dict, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        raise CamscopeError(
            f"the weights in {path} do not fit {spec['name']}: "
            f"{len(missing)} missing, {len(unexpected)} unexpected",
            "the checkpoint may come from another camscope version; retrain with this one",
        )


def _build_args(spec: dict) -> dict:
    return {
        "name": spec["name"],
        "num_classes": spec["num_classes"],
        "in_channels": spec["in_channels"],
        "image_size": tuple(spec["image_size"]),
        **spec.get("kwargs", {}),
    }


def load_model(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, checkpoint metadata, Preprocess) from a checkpoint or a run folder.

    The header is checked before anything is built: the model's recipe, its normalisation, and
    the shape of every tensor the recipe implies against the tensors in the file.
    """
    from camscope.models import build_model
    from camscope.models.inference import Preprocess

    file = checkpoint_file(path)
    meta = read_meta(file)
    spec = model_spec(meta, path)
    mean, std = preprocess_of(meta, path)
    try:
        _check_shapes(spec, path, tensor_shapes(file))
        ck = load_checkpoint(file)
        model = build_model(**_build_args(spec))
    except (KeyError, TypeError) as e:
        raise CamscopeError(
            f"{path} has an incomplete model recipe ({e})",
            "the checkpoint's header was edited or damaged; use the checkpoint training wrote",
        ) from None
    try:
        missing, unexpected = model.load_state_dict(ck.model, strict=False)
    except RuntimeError as e:  # shapes that do not match the architecture the sidecar names
        first = str(e).split("\n\t", 1)[-1].split("\n")[0]
        raise CamscopeError(
            f"the weights in {path} do not fit {spec['name']}: {first}",
            "the sidecar names another architecture than the weights were trained with",
        ) from None
    _check_names(path, spec, missing, unexpected)
    return model.to(device).eval(), ck.meta, Preprocess(mean, std)
