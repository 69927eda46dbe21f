"""The study file: one validated description of a whole analysis, from the source to the report."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from camscope.data.audit import BAD_FILE_KINDS, PROBLEM_KINDS
from camscope.data.spec import SourceSpec
from camscope.errors import CamscopeError
from camscope.explain.registry import lookup
from camscope.train.config import TrainConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StudySource(SourceSpec):
    # synthetic coins written to disk with planted problems, then read back like any CSV
    messy: bool = False


class AuditSection(_Strict):
    near_duplicates: bool = True
    mirrors: bool = False  # also search left-right mirrored copies (about twice the search time)
    workers: int = 0


class LabelIssuesSection(_Strict):
    """A label-issues screen of the prepared dataset (camscope label-issues): evaluate then also
    scores each experiment's test items without the flagged ones. Nothing is dropped."""

    folds: int = Field(5, ge=2)
    # frozen: the backbone's features and a linear head; or a camscope model trained per fold
    model: str = "frozen"
    epochs: float | None = Field(None, gt=0)  # trained folds: epochs per fold
    train: dict = Field(default_factory=dict)  # trained folds: more training options
    backbone: str = "tf_efficientnet_lite0"
    weights: str | None = "imagenet"
    score: Literal["normalized_margin", "self_confidence"] = "normalized_margin"
    min_side: int = Field(96, ge=1)

    @model_validator(mode="after")
    def _trained_options(self) -> LabelIssuesSection:
        if self.model == "frozen" and (self.epochs is not None or self.train):
            raise ValueError(
                "epochs and train apply to a model trained per fold: add model: fastnet, or drop them"
            )
        return self


class DropLabelIssues(_Strict):
    """Which screened items leave training: the ``top_k`` lowest label-quality scores, or every
    item scoring below ``threshold``. Only train and val items are dropped; the test set stays as
    it is, and evaluate reports its accuracy with and without the flagged items."""

    top_k: int | None = Field(None, ge=1)
    threshold: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _one(self) -> DropLabelIssues:
        if (self.top_k is None) == (self.threshold is None):
            raise ValueError("give exactly one of top_k (e.g. top_k: 20) or threshold (e.g. threshold: 0.1)")
        return self


class CleanSection(_Strict):
    # audit finding kinds whose items are left out before preparation
    drop: list[str] = Field(default_factory=lambda: list(BAD_FILE_KINDS))

    @field_validator("drop")
    @classmethod
    def _kinds(cls, v: list[str]) -> list[str]:
        unknown = [k for k in v if k not in PROBLEM_KINDS]
        if unknown:
            known = ", ".join(PROBLEM_KINDS)
            raise ValueError(f"unknown audit finding(s) {', '.join(unknown)}; known: {known}")
        return v

    # keep one item of each duplicate group (split time): none | exact | near
    dedupe: Literal["none", "exact", "near"] = "none"
    # take probable label issues out of training (needs a label_issues section); recorded in
    # each split's notes and summary
    drop_label_issues: DropLabelIssues | None = None


class PrepareSection(_Strict):
    size: int = 64
    policy: Literal["pad", "crop", "stretch"] = "pad"
    channels: Literal[1, 3] = 3
    combine: Literal["side_by_side", "channels"] = "side_by_side"
    workers: int = 0


class SplitSection(_Strict):
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    allow_leaks: bool = False
    respect_given: bool = True


class ClassesSection(_Strict):
    names: list[str] | None = None
    top_k: int | None = None
    ranks: list[int] | None = None  # 1-based size ranks, e.g. [2, 3]
    min_count: int | None = None


class SearchSection(_Strict):
    """Hyper-parameter search, judged on the validation split only."""

    method: Literal["grid", "optuna", "list"] = "grid"
    # grid: key -> list of values; optuna: key -> list (categorical) or {low, high, log}
    params: dict[str, Any] = Field(default_factory=dict)
    # list: whole training sections side by side (from scratch against pretrained, say), each
    # with an optional short "name" and prepare.<option> keys; the experiment's train is not used
    candidates: list[dict[str, Any]] = Field(default_factory=list)
    trials: int = 8  # optuna only
    seed: int = 0

    @field_validator("candidates")
    @classmethod
    def _candidates(cls, v: list[dict]) -> list[dict]:
        for i, c in enumerate(v):
            for key in c:
                if key == "name":
                    continue
                if key.startswith("prepare.") and key[8:] not in PrepareSection.model_fields:
                    raise ValueError(f"candidate {i}: unknown preparation option {key[8:]!r}")
                if not key.startswith("prepare.") and key not in TrainConfig.model_fields:
                    raise ValueError(f"candidate {i}: unknown training option {key!r}")
        return v

    @model_validator(mode="after")
    def _method(self):
        if self.method == "list" and (not self.candidates or self.params):
            raise ValueError("method list takes candidates (a list of train sections), not params")
        if self.method != "list" and self.candidates:
            raise ValueError("candidates are for method: list")
        return self

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict) -> dict:
        for key, values in v.items():
            if not key.startswith("prepare.") and key not in TrainConfig.model_fields:
                raise ValueError(f"unknown parameter {key!r} (a training option or prepare.<option>)")
            if key.startswith("prepare.") and key[8:] not in PrepareSection.model_fields:
                raise ValueError(f"unknown preparation option {key[8:]!r}")
            if isinstance(values, dict):
                if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                    raise ValueError(f"{key}: a range is {{low: .., high: .., log: true|false}}")
            elif not isinstance(values, list) or not values:
                raise ValueError(f"{key}: give a non-empty list of values")
        return v


class MaskSection(_Strict):
    sizes: list[float] = Field(default_factory=lambda: [round(0.1 * i, 1) for i in range(1, 10)])
    modes: list[Literal["centre", "outer"]] = Field(default_factory=lambda: ["centre", "outer"])
    fill: Literal["zero", "mean", "blur", "noise"] = "zero"
    shape: Literal["disk", "square"] = "disk"
    cam_images: int = 128


class UnseenSection(_Strict):
    names: list[str] | None = None  # default: every class the experiment left out
    ranks: list[int] | None = None  # or by size rank in the whole dataset


class ExplainSection(_Strict):
    methods: list[str] = Field(default_factory=lambda: ["gradcam"])
    per_class: int = 6
    faithfulness_images: int = 128

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        for name in v:  # refused before anything runs, not after training
            try:
                lookup(name)
            except CamscopeError as e:
                raise ValueError(f"{e.message}; {e.hint}") from None
        return v


class FeaturesSection(_Strict):
    projections: list[str] = Field(default_factory=lambda: ["pca", "tsne", "umap"])


ANALYSES = ("evaluate", "explain", "faithfulness", "mask", "unseen", "features")


class Experiment(_Strict):
    name: str
    description: str = ""
    classes: ClassesSection = Field(default_factory=ClassesSection)
    train: dict[str, Any] = Field(default_factory=dict)  # TrainConfig options over the model's recipe
    search: SearchSection | None = None
    analyses: list[Literal["evaluate", "explain", "faithfulness", "mask", "unseen", "features"]] = Field(
        default_factory=lambda: ["evaluate", "explain"]
    )
    explain: ExplainSection = Field(default_factory=ExplainSection)
    mask: MaskSection = Field(default_factory=MaskSection)
    unseen: UnseenSection = Field(default_factory=UnseenSection)
    features: FeaturesSection = Field(default_factory=FeaturesSection)
    tta: str | None = None  # evaluation TTA (default: the recipe's)
    bootstrap: int = 1000

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or not all(ch.isalnum() or ch in "-_" for ch in v):
            raise ValueError("use letters, digits, '-' and '_' only (it names a folder)")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(TrainConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown training option(s) {', '.join(unknown)}")
        return v

    def candidates(self) -> list[dict[str, Any]]:
        """The grid's settings, each a dict of overrides (one empty dict without a grid search), or
        the list's train sections."""
        if self.search is not None and self.search.method == "list":
            return [dict(c) for c in self.search.candidates]
        if self.search is None or self.search.method != "grid" or not self.search.params:
            return [{}]
        keys = sorted(self.search.params)
        return [
            dict(zip(keys, combo, strict=True))
            for combo in itertools.product(*(self.search.params[k] for k in keys))
        ]


class Study(_Strict):
    name: str
    description: str = ""
    seed: int = 0
    device: str = "cpu"
    source: StudySource
    audit: AuditSection = Field(default_factory=AuditSection)
    clean: CleanSection = Field(default_factory=CleanSection)
    prepare: PrepareSection = Field(default_factory=PrepareSection)
    split: SplitSection = Field(default_factory=SplitSection)
    label_issues: LabelIssuesSection | None = None
    experiments: list[Experiment]
    report: bool = True

    @model_validator(mode="after")
    def _unique(self):
        names = [e.name for e in self.experiments]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"experiment names must be unique: {', '.join(dup)}")
        if not names:
            raise ValueError("a study needs at least one experiment")
        if self.clean.drop_label_issues is not None and self.label_issues is None:
            raise ValueError(
                "clean.drop_label_issues needs a label_issues section (the screen it drops from), "
                "e.g. label_issues: {folds: 5}"
            )
        return self

    # where the study file lives: relative data paths are read from there
    _base: Path = Path(".")
    _text: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> Study:
        """Read and validate a study file; ``overrides`` maps dotted keys to values (e.g. a data path)."""
        p = Path(path)
        if not p.is_file():
            raise CamscopeError(f"study file {p} not found", "give the path of a .yaml study file")
        raw = load_yaml(p.read_text(encoding="utf-8"), str(p))
        if not isinstance(raw, dict):
            raise CamscopeError(f"{p} does not hold a study (a mapping of sections)", "see studies/demo.yaml")
        for key, value in (overrides or {}).items():
            _set_dotted(raw, key, value)
        study = cls.from_dict(raw, str(p))
        study._base = p.resolve().parent
        study._text = p.read_text(encoding="utf-8")
        study._resolve_paths()
        return study

    @classmethod
    def from_dict(cls, raw: dict, where: str = "study") -> Study:
        try:
            return cls.model_validate(raw)
        except ValidationError as e:
            first = e.errors()[0]
            loc = ".".join(str(x) for x in first["loc"])
            kind = first["type"]
            msg = first["msg"]
            if kind == "extra_forbidden":
                msg = "unknown key"
            more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
            raise CamscopeError(
                f"{where}: {loc}: {msg}{more}",
                "compare with studies/demo.yaml and the README's study section",
            ) from None

    def _resolve_paths(self) -> None:
        s = self.source
        for attr in ("path", "data_root"):
            value = getattr(s, attr)
            if value and s.resolved_kind() != "synthetic" and not _is_special(value):
                archive = value.split("!/", 1)
                p = Path(archive[0]).expanduser()
                if not p.is_absolute():
                    p = (self._base / p).resolve()
                if not p.exists():
                    raise CamscopeError(
                        f"source.{attr}: {p} not found",
                        f"fix the path in the study file or override it: --set source.{attr}=PATH",
                    )
                setattr(s, attr, str(p) + (f"!/{archive[1]}" if len(archive) > 1 else ""))

    def run(self, out: str | Path, from_stage: str | None = None, console=None) -> dict:
        """Run the study into ``out`` (cached stages are skipped); returns what ran and where."""
        from camscope.study.runner import StudyRun

        return StudyRun(self, out, self._text, console).run(from_stage)

    def train_config_overrides(self, exp: Experiment, candidate: dict) -> dict:
        listed = exp.search is not None and exp.search.method == "list"
        over = {"seed": self.seed, "device": self.device, **({} if listed else exp.train)}
        over.update({k: v for k, v in candidate.items() if not k.startswith("prepare.") and k != "name"})
        return over


def _is_special(value: str) -> bool:
    return value.lower().startswith(("cifar10", "synthetic"))


# A study is a few hundred values; aliases (&a ... *a) may repeat a block, but an alias bomb
# (9 levels of 9 references: 387 million values from 857 bytes) must be refused before it is built.
MAX_YAML_VALUES = 100_000


def load_yaml(text: str, where: str, hint: str = "check the indentation near that line") -> Any:
    """YAML through the safe loader (no tags that build Python objects), refused when its aliases
    would expand past MAX_YAML_VALUES."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _count_values(node, {}, set())
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise CamscopeError(f"{where} is not valid YAML: {' '.join(str(e).split())}", hint) from None
    except (_TooBig, RecursionError):
        raise CamscopeError(
            f"{where} expands to more than {MAX_YAML_VALUES:,} values through its aliases "
            "(&name ... *name) or nests too deeply",
            "write the repeated values out; a study needs a few hundred",
        ) from None


class _TooBig(Exception):
    pass


def _count_values(node: yaml.Node, seen: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` stands for once every alias is expanded (each node counted once)."""
    if id(node) in seen:
        return seen[id(node)]
    if id(node) in open_:  # an alias to a node that contains it: infinite once expanded
        raise _TooBig
    open_.add(id(node))
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_count_values(child, seen, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_count_values(k, seen, open_) + _count_values(v, seen, open_) for k, v in node.value)
    open_.discard(id(node))
    if n > MAX_YAML_VALUES:
        raise _TooBig
    seen[id(node)] = n
    return n


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise CamscopeError(
            f"--set {key}: empty part in the key", "write section.key=value, e.g. split.seed=1"
        )
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            names = [e.get("name") for e in node if isinstance(e, dict)]
            node = next((e for e in node if isinstance(e, dict) and e.get("name") == part), None)
            if node is None:
                raise CamscopeError(
                    f"--set {key}: no experiment named {part!r}", f"experiments: {', '.join(map(str, names))}"
                )
            continue
        node = node.setdefault(part, {})
        if not isinstance(node, dict | list):
            where = ".".join(parts[: i + 1])
            raise CamscopeError(
                f"--set {key}: {where} is a value ({node!r}), not a section with keys",
                f"set it directly: --set {where}=VALUE",
            )
    if isinstance(node, list):
        raise CamscopeError(
            f"--set {key}: {'.'.join(parts[:-1])} is a list of experiments",
            f"name the experiment and the key: --set {'.'.join(parts[:-1])}.NAME.KEY=VALUE",
        )
    node[parts[-1]] = value


def parse_set(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs from the command line; values are read as YAML (numbers, lists, true)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise CamscopeError(
                f"cannot read --set {item!r}", "write key=value, e.g. source.path=/data/coins.zip"
            )
        k, v = item.split("=", 1)
        out[k.strip()] = load_yaml(
            v, f"the value of --set {k.strip()}", "give a number, true/false, a list [a, b] or plain text"
        )
    return out
