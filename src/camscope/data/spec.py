"""One validated description of a source, shared by the CLI and study files."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from camscope.data.imageio import DEFAULT_MAX_PIXELS
from camscope.data.sources import CsvSource, FolderSource, Source
from camscope.errors import CamscopeError


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "folder", "csv", "cifar10", "synthetic"] = "auto"
    path: str | None = None
    # folder / zip
    prefix: str = ""
    # CSV manifest
    data_root: str | None = None
    image_cols: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)
    side_names: list[str] | None = None
    label_col: str | None = None
    label_from: str | None = None
    label_regex: str | None = None
    id_col: str | None = None
    delimiter: str | None = None
    # CIFAR-10
    download: bool = False
    # synthetic coins
    n: int = 1000
    size: int = 64
    seed: int = 0
    centre_classes: int = 2
    rim_classes: int = 2
    max_pixels: int = DEFAULT_MAX_PIXELS

    def resolved_kind(self) -> str:
        if self.kind != "auto":
            return self.kind
        if self.path is None:
            raise CamscopeError("no source given", "pass a folder, a zip, a CSV, 'cifar10' or 'synthetic'")
        low = self.path.lower()
        if low == "synthetic" or low.startswith("synthetic:"):
            return "synthetic"
        if low == "cifar10" or low.startswith("cifar10:"):
            return "cifar10"
        if low.endswith(".csv") or ".csv!" in low or (".zip!/" in low and low.endswith(".csv")):
            return "csv"
        if low.endswith(".tar.gz") and "cifar-10" in low:
            return "cifar10"
        return "folder"


def parse_source_arg(arg: str, **options) -> SourceSpec:
    """'synthetic:n=200,seed=1', 'cifar10', 'cifar10:PATH', a folder, a zip, a CSV, 'a.zip!/x.csv'."""
    spec: dict = {k: v for k, v in options.items() if v not in (None, [], "")}
    if arg.lower().startswith("synthetic"):
        spec["kind"] = "synthetic"
        if ":" in arg:
            for part in arg.split(":", 1)[1].split(","):
                if not part.strip():
                    continue
                if "=" not in part:
                    raise CamscopeError(f"cannot read {part!r} in {arg!r}", "write synthetic:n=500,seed=1")
                k, v = part.split("=", 1)
                spec[k.strip()] = v.strip()
        return SourceSpec(**spec)
    if arg.lower().startswith("cifar10"):
        spec["kind"] = "cifar10"
        spec["path"] = arg.split(":", 1)[1] if ":" in arg else None
        return SourceSpec(**spec)
    spec["path"] = arg
    if spec.get("image_cols") or spec.get("patterns"):
        spec.setdefault("kind", "csv")
    return SourceSpec(**spec)


def open_source(spec: SourceSpec) -> Source:
    kind = spec.resolved_kind()
    if kind == "synthetic":
        from camscope.data.synthetic import CoinSpec, SyntheticSource

        return SyntheticSource(
            CoinSpec(
                n=spec.n,
                size=spec.size,
                seed=spec.seed,
                centre_classes=spec.centre_classes,
                rim_classes=spec.rim_classes,
            )
        )
    if kind == "cifar10":
        from camscope.data.cifar import Cifar10Source

        return Cifar10Source(spec.path, download_if_missing=spec.download)
    assert spec.path is not None
    if kind == "csv":
        if not spec.image_cols and not spec.patterns:
            raise CamscopeError(
                "a CSV source needs image path columns or file-name patterns",
                "pass --image-col COL (once per side) or --pattern 'heads{row:05d}.jpg'",
            )
        return CsvSource(
            spec.path,
            data_root=spec.data_root,
            image_cols=spec.image_cols,
            patterns=spec.patterns,
            side_names=spec.side_names,
            label_col=spec.label_col,
            label_from=spec.label_from,
            label_regex=spec.label_regex,
            id_col=spec.id_col,
            delimiter=spec.delimiter,
            max_pixels=spec.max_pixels,
        )
    if not Path(spec.path).exists():
        raise CamscopeError(f"{spec.path} does not exist", "check the path of the source")
    return FolderSource(spec.path, max_pixels=spec.max_pixels, prefix=spec.prefix)
