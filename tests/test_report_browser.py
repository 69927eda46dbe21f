"""The demo study's report, opened in headless Chromium: every image loads, the console is clean."""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import pytest

from camscope.study.config import Study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    t0, c0 = time.perf_counter(), _cpu_seconds()
    res = Study.from_yaml(ROOT / "studies" / "demo.yaml").run(out)
    return Path(res["root"]), time.perf_counter() - t0, _cpu_seconds() - c0


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def test_demo_study_runs_every_stage_in_time(demo_run):
    root, seconds, cpu = demo_run
    stages = json.loads((root / "stages.json").read_text())
    assert all(s["status"] == "done" for s in stages.values())
    kinds = {s["kind"] for s in stages.values()}
    assert kinds >= {
        "audit",
        "prepare",
        "split",
        "train",
        "evaluate",
        "explain",
        "faithfulness",
        "mask",
        "unseen",
        "features",
        "label_issues",
        "report",
    }
    # the promise is under 3 minutes on a 2-core machine; CPU time keeps the check fair when other
    # work shares the machine (wall time alone then says more about the neighbours)
    assert cpu < 2 * 180, f"the demo study used {cpu:.0f} CPU-seconds ({seconds:.0f} s wall)"
    results = json.loads((root / "results.json").read_text())
    planted = results["data"]["planted_problems"]
    found = results["data"]["audit"]["problem_counts"]
    for kind in (
        "zero_byte",
        "truncated",
        "not_an_image",
        "missing_side",
        "exact_duplicate",
        "dark",
        "blank",
    ):
        assert found.get(kind, 0) >= 1 and planted.get(kind, 0) >= 1, kind
    # clean.drop_label_issues {top_k: 5}: five screened items left training, none left the test set
    split = (root / "coins" / "split.csv").read_text(encoding="utf-8")
    assert 1 <= split.count("probable label issue") <= 5  # the five most suspect, less those in test


def test_demo_report_renders_in_chromium(demo_run, tmp_path):
    import playwright.sync_api as pw  # a test dependency: missing, the suite fails

    from tests.browser import launch

    root = demo_run[0]
    errors: list[str] = []
    with pw.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.on(
                "console",
                lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url[:80]}"))
            page.goto((root / "report.html").as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => ({ok: e.complete && e.naturalWidth > 0, alt: e.alt}))"
            )
            toc = page.eval_on_selector_all("nav a", "els => els.map(e => e.getAttribute('href'))")
            missing = [h for h in toc if not page.query_selector(h)]
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(images) >= 15
    alts = {i["alt"] for i in images}
    assert {"most suspect labels", "evidence for the given and the suggested label"} <= alts
    broken = [i["alt"] for i in images if not i["ok"]]
    assert not broken, f"images that did not load: {broken}"
    assert not errors, errors
    assert not missing, f"table-of-contents links without a target: {missing}"
    assert (tmp_path / "report.png").stat().st_size > 50_000
