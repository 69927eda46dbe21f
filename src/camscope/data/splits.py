"""Stratified, group-aware, reproducible train / val / test splits.

Items that are duplicates of each other (exact or near, from the audit) form a group, and a group
is assigned to one split as a whole, so a test image never has its twin in training unless the
user asks for it (``allow_leaks``). Within each class, groups are shuffled with the seed and
placed greedily into the split furthest below its target count: the same inputs and seed give
the same split, bit for bit.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from camscope.data.neardup import merge_groups
from camscope.data.prepare import PreparedDataset
from camscope.data.selection import ClassSelection, select_classes
from camscope.errors import CamscopeError
from camscope.utils import atomic_write_text

SPLITS = ("train", "val", "test")


@dataclass
class SplitConfig:
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    allow_leaks: bool = False
    respect_given: bool = True
    dedupe: str = "none"  # none | exact | near: keep one item of each duplicate group
    selection: ClassSelection = field(default_factory=ClassSelection)
    # item id -> why: items taken out of train and val after placement (test items stay, so the
    # test set is the one a split without them would have); e.g. probable label issues
    drop_from_training: dict[str, str] = field(default_factory=dict)

    def validate(self) -> None:
        f = self.fractions
        if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0:
            raise CamscopeError(
                f"split fractions {f} must be three non-negative numbers summing to 1",
                "for example 0.7,0.15,0.15",
            )
        if self.dedupe not in ("none", "exact", "near"):
            raise CamscopeError(f"unknown dedupe mode {self.dedupe!r}", "use none, exact or near")


def parse_fractions(text: str) -> tuple[float, ...]:
    """'0.7,0.15,0.15' -> (0.7, 0.15, 0.15); checked by ``SplitConfig.validate``."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise CamscopeError(f"cannot read fractions {text!r}", "write them like 0.7,0.15,0.15") from None


@dataclass
class SplitResult:
    rows: list[dict]  # id, label, split, group, dup_in_train, note
    summary: dict

    def ids(self, split: str) -> list[str]:
        return [r["id"] for r in self.rows if r["split"] == split]

    def indices(self, ds: PreparedDataset, split: str) -> list[int]:
        pos = {i: k for k, i in enumerate(ds.ids)}
        return [pos[r["id"]] for r in self.rows if r["split"] == split]


def _owners(ds: PreparedDataset) -> dict[str, list[str]]:
    """Image path -> the items that name it (usually one)."""
    owners: dict[str, list[str]] = defaultdict(list)
    for item_id, keys in zip(ds.ids, ds.side_keys, strict=True):
        for k in keys:
            if k is not None:
                owners[k].append(item_id)
    return owners


def _item_groups(ds: PreparedDataset, path_groups: list[list[str]]) -> list[list[str]]:
    """Image-path groups from the audit -> groups of item ids present in ``ds`` (merged). Items
    that name the same file are one picture and always form a group, audit or not."""
    owners = _owners(ds)
    shared = [ids for ids in owners.values() if len(ids) > 1]
    return merge_groups([*({i for p in g for i in owners.get(p, [])} for g in path_groups), *shared])


def duplicate_groups(ds: PreparedDataset, audit: dict | None = None) -> list[list[str]]:
    """Groups of item ids that are one picture: the audit's exact and near-duplicate groups, and
    items naming the same file (with or without an audit)."""
    if audit is not None:
        _check_audit(ds, audit)
    paths = [*audit["exact_duplicate_groups"], *audit["near_duplicate_groups"]] if audit else []
    return _item_groups(ds, paths)


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _assign(
    groups: list[list[int]], strata: list[str], fractions: list[float], names: list[str], seed: int
) -> dict[int, str]:
    """Place whole groups into splits, class by class, filling the split with the largest deficit."""
    out: dict[int, str] = {}
    by_stratum: dict[str, list[list[int]]] = defaultdict(list)
    for g, s in zip(groups, strata, strict=True):
        by_stratum[s].append(g)
    for stratum in sorted(by_stratum):
        gs = sorted(by_stratum[stratum], key=lambda g: min(g))
        rng = np.random.default_rng([seed, _stable_int(stratum)])
        order = rng.permutation(len(gs))
        gs = [gs[i] for i in order]
        gs.sort(key=len, reverse=True)  # stable: big groups first, shuffled order within a size
        total = sum(len(g) for g in gs)
        target = [f * total for f in fractions]
        filled = [0] * len(names)
        for g in gs:
            k = max(range(len(names)), key=lambda i: (target[i] - filled[i], -i))
            filled[k] += len(g)
            for idx in g:
                out[idx] = names[k]
    return out


def make_split(
    ds: PreparedDataset, config: SplitConfig | None = None, audit: dict | None = None
) -> SplitResult:
    config = config or SplitConfig()
    config.validate()
    labels = [ds.classes[i] if i >= 0 else None for i in ds.labels.tolist()]
    selected, unseen = _select(labels, config)
    if audit is not None:
        _check_audit(ds, audit)
    exact_groups = _item_groups(ds, audit["exact_duplicate_groups"] if audit else [])
    all_groups = _item_groups(
        ds, [*audit["exact_duplicate_groups"], *audit["near_duplicate_groups"]] if audit else []
    )
    split, note = _set_aside(ds, labels, set(selected), config, exact_groups, all_groups)
    # groups (of the items still to place) that must not straddle splits
    pos = {i: k for k, i in enumerate(ds.ids)}
    group_of = {pos[i]: gi for gi, g in enumerate(all_groups) for i in g}
    todo = [k for k in range(len(ds)) if k not in split]
    units: dict[object, list[int]] = defaultdict(list)
    for k in todo:
        key = ("g", group_of[k]) if (k in group_of and not config.allow_leaks) else ("i", k)
        units[key].append(k)
    given = ds.given_splits if config.respect_given else [None] * len(ds)
    has_given = any(given[k] is not None for k in todo)
    if has_given:
        _place_given(split, list(units.values()), given, labels, config)
    else:
        ulist = list(units.values())
        split.update(
            _assign(
                ulist,
                [_majority(labels, u) for u in ulist],
                list(config.fractions),
                list(SPLITS),
                config.seed,
            )
        )
    for k, i in enumerate(ds.ids):
        if i in config.drop_from_training and split.get(k) in ("train", "val"):
            split[k], note[k] = "dropped", config.drop_from_training[i]
    # leakage check: test (and val) items sharing a duplicate group with a training item
    train_groups = {group_of[k] for k in range(len(ds)) if split[k] == "train" and k in group_of}
    dup_in_train = {
        k for k in range(len(ds)) if k in group_of and group_of[k] in train_groups and split[k] != "train"
    }
    rows = [
        {
            "id": ds.ids[k],
            "label": labels[k] or "",
            "split": split[k],
            "group": group_of.get(k, ""),
            "dup_in_train": int(k in dup_in_train),
            "note": note.get(k, ""),
        }
        for k in range(len(ds))
    ]
    summary = {
        "schema": "camscope.split/1",
        "config": {**asdict(config), "fractions": list(config.fractions)},
        "selected_classes": selected,
        "unseen_classes": unseen,
        "given_splits_respected": has_given,
        **_counts(ds, labels, split, all_groups, dup_in_train),
        "dataset_hash": ds.info.get("dataset_hash"),
        "audit_used": audit is not None,
    }
    return SplitResult(rows, summary)


def _check_audit(ds: PreparedDataset, audit: dict) -> None:
    """Refuse the audit of another source: it would silently group nothing. The audit and the
    prepared dataset of one source share the fingerprint of its items (older files: its description)."""
    theirs, ours = audit.get("source") or {}, ds.info.get("source") or {}
    key = "items_digest" if theirs.get("items_digest") and ours.get("items_digest") else "description"
    if theirs.get(key) and ours.get(key) and theirs[key] != ours[key]:
        raise CamscopeError(
            f"the audit is of another source ({theirs.get('description', '?')}, {audit.get('n_items', '?')} "
            f"items) than the prepared dataset ({ours.get('description', '?')})",
            "give the audit of the source this dataset was prepared from",
        )


def _select(labels: list[str | None], config: SplitConfig) -> tuple[list[str], list[str]]:
    """The classes to train on (largest first) and the ones left out as unseen."""
    counts = Counter(lab for lab in labels if lab is not None)
    if len(counts) < 2:
        raise CamscopeError(
            f"the dataset has {len(counts)} labelled class(es)",
            "a split for classification needs at least two classes",
        )
    if config.selection.is_empty():
        return sorted(counts, key=lambda c: (-counts[c], c)), []
    return select_classes(dict(counts), config.selection)


def _set_aside(ds, labels, selected: set[str], config, exact_groups, all_groups) -> tuple[dict, dict]:
    """(split, note) of the items that are not placed: unlabelled and unseen items, and the
    duplicates deduplication drops (it keeps the first item by id of a group whose labels agree)."""
    split: dict[int, str] = {}
    note: dict[int, str] = {}
    for k, lab in enumerate(labels):
        if lab is None:
            split[k], note[k] = "dropped", "no label"
        elif lab not in selected:
            split[k] = "unseen"
    if config.dedupe == "none":
        return split, note
    pos = {i: k for k, i in enumerate(ds.ids)}
    for g in exact_groups if config.dedupe == "exact" else all_groups:
        idx = [pos[i] for i in g if pos[i] not in split]
        if len(idx) < 2:
            continue
        if len({labels[i] for i in idx}) > 1:
            for i in idx:
                split[i], note[i] = "dropped", "duplicate with a conflicting label"
        else:
            for i in idx[1:]:
                split[i], note[i] = "dropped", f"duplicate of {ds.ids[idx[0]]}"
    return split, note


def _place_given(split: dict, units: list[list[int]], given: list, labels, config: SplitConfig) -> None:
    """Given test (and val) items keep their split even when a twin sits in the given train:
    moving them would change an official test set; the leak is flagged (dup_in_train) instead.
    Without a given val, val is carved group-aware out of the given train."""
    fr = list(config.fractions)
    has_val = any(given[k] == "val" for u in units for k in u)
    pool = []
    for u in units:
        rest = []
        for k in u:
            if given[k] in ("test", "val"):
                split[k] = given[k]
            else:
                rest.append(k)
        if not rest:
            continue
        if has_val or fr[1] == 0:
            for k in rest:
                split[k] = "train"
        else:
            pool.append(rest)
    if pool:
        tv = fr[0] + fr[1]
        strata = [_majority(labels, u) for u in pool]
        split.update(_assign(pool, strata, [fr[0] / tv, fr[1] / tv], ["train", "val"], config.seed))


def _counts(ds, labels, split: dict, all_groups, dup_in_train: set[int]) -> dict:
    """Per split and class, and how the duplicate groups fared."""
    pos = {i: k for k, i in enumerate(ds.ids)}
    per_split = {
        s: Counter(labels[k] for k in range(len(ds)) if split[k] == s) for s in (*SPLITS, "unseen", "dropped")
    }
    # only the items that take part in training or evaluation count (not unseen or dropped ones)
    in_play = [[i for i in g if split[pos[i]] in SPLITS] for g in all_groups]
    in_play = [g for g in in_play if len(g) > 1]
    kept_together = [g for g in in_play if len({split[pos[i]] for i in g}) == 1]
    return {
        "counts": {s: dict(sorted(c.items())) for s, c in per_split.items()},
        "totals": {s: sum(c.values()) for s, c in per_split.items()},
        "duplicate_groups": len(in_play),
        "duplicate_groups_kept_together": len(kept_together),
        "items_in_duplicate_groups": sum(len(g) for g in in_play),
        "test_items_with_duplicate_in_train": sum(1 for k in dup_in_train if split[k] == "test"),
        "val_items_with_duplicate_in_train": sum(1 for k in dup_in_train if split[k] == "val"),
    }


def _majority(labels: list[str | None], unit: list[int]) -> str:
    c = Counter(labels[k] for k in unit)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0] or ""))[0][0] or ""


def write_split(result: SplitResult, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    if any((out / f"{tag}.safetensors").is_file() for tag in ("best", "last")):
        raise CamscopeError(
            f"{out} holds a trained run: its split is the one it was trained on",
            "write the new split to another folder and train a new run on it",
        )
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        fieldnames=["id", "label", "split", "group", "dup_in_train", "note"],
        lineterminator="\n",
    )
    w.writeheader()
    w.writerows(result.rows)
    atomic_write_text(out / "split.csv", buf.getvalue())
    atomic_write_text(out / "split.json", json.dumps(result.summary, indent=1, ensure_ascii=False))
    return out / "split.csv", out / "split.json"


def split_digest(assignment: dict[str, str]) -> str:
    """A fingerprint of which item is in which split (whatever the file's column order)."""
    h = hashlib.blake2b(digest_size=16)
    for item, name in sorted(assignment.items()):
        h.update(f"{item}\t{name}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def load_split(path: str | Path) -> dict[str, str]:
    p = Path(path)
    if p.is_dir():
        p = p / "split.csv"
    if not p.is_file():
        raise CamscopeError(f"no split at {p}", "run `camscope split PREPARED --out DIR` first")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"id", "split"} <= set(reader.fieldnames):
            raise CamscopeError(f"{p} lacks the columns id and split", "write it with `camscope split`")
        return {row["id"]: row["split"] for row in reader}
