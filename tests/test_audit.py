import json

import numpy as np
import pytest

from camscope.data.audit import audit, load_audit, write_audit
from camscope.data.messy import HEADS, LABEL_REGEX, TAILS
from camscope.data.neardup import connected_groups, find_near_duplicates, merge_groups
from camscope.data.sources import CsvSource, FolderSource
from camscope.data.synthetic import CoinSpec, generate


def _audit_messy(messy):
    manifest, planted = messy
    src = CsvSource(manifest, patterns=[HEADS, TAILS], label_from="Obverse", label_regex=LABEL_REGEX)
    return audit(src), planted


def test_audit_finds_every_planted_problem(messy, tmp_path):
    report, planted = _audit_messy(messy)
    found: dict[str, set] = {}
    for p in report["problems"]:
        found.setdefault(p["kind"], set()).update(p["item_ids"])
    for kind, ids in planted.items():
        assert kind in report["problem_counts"], f"{kind} not reported"
        assert set(ids) <= found[kind], f"{kind}: planted {ids}, found {sorted(found[kind])}"
    # near-duplicate search: each planted pair found, with no unrelated coin dragged in
    groups = [set(g) for g in report["near_duplicate_groups"]]
    assert len(groups) >= 8
    flat = set().union(*groups)
    planted_rows = {int(r[3:]) for r in planted["near_duplicate"]}
    assert all(int(p[-9:-4]) in planted_rows for p in flat)
    assert report["exact_duplicate_groups"]
    path = write_audit(report, tmp_path)
    again = load_audit(tmp_path)
    assert json.loads(path.read_text())["n_items"] == again["n_items"] == 200
    for key in ("n_items", "class_counts", "problems", "exact_duplicate_groups", "near_duplicate_groups"):
        assert key in again


def test_audit_single_class_and_clean_tree(class_tree):
    report = audit(FolderSource(class_tree))
    assert report["n_items"] == 30 and report["class_counts"] == {"ant": 12, "bee": 10, "cat": 8}
    assert not report["exact_duplicate_groups"] and not report["near_duplicate_groups"]
    assert "single_class" not in report["problem_counts"]
    for c in ("bee", "cat"):
        for f in (class_tree / c).iterdir():
            f.unlink()
        (class_tree / c).rmdir()
    single = audit(FolderSource(class_tree))
    assert single["problem_counts"]["single_class"] == 1


def test_corrupt_file_does_not_stop_the_audit(class_tree):
    (class_tree / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    report = audit(FolderSource(class_tree))
    assert report["n_items"] == 31 and report["n_readable"] == 30
    assert any(p["kind"] in ("unreadable", "truncated", "not_an_image") for p in report["problems"])


def test_near_duplicates_are_found_and_distinct_coins_are_not():
    from PIL import Image

    coins = generate(CoinSpec(n=300, seed=5))
    imgs = [Image.fromarray(x) for x in coins.images[:, 0]]
    copies = [
        imgs[0].resize((128, 128), Image.BICUBIC),  # rescaled
        imgs[1].crop((4, 4, 60, 60)).resize((64, 64), Image.BICUBIC),  # cropped
        Image.fromarray(np.clip(np.asarray(imgs[2])[..., ::-1] * 0.9 + 20, 0, 255).astype(np.uint8)),
    ]
    allim = imgs + copies
    thumbs = np.stack([np.asarray(i.convert("L").resize((32, 32), Image.BILINEAR)) for i in allim])
    fine = np.stack([np.asarray(i.convert("L").resize((64, 64), Image.BILINEAR)) for i in allim])
    res = find_near_duplicates(thumbs, fine=fine)
    groups = [set(g) for g in connected_groups(len(allim), res.pairs)]
    assert {0, 300} in groups and {1, 301} in groups and {2, 302} in groups
    assert len(groups) <= 4  # at most one accidental pair among 300 distinct coins


def test_mirrored_copies_are_found_when_asked_for():
    from PIL import Image

    from camscope.data.neardup import NearDupParams

    coins = generate(CoinSpec(n=200, seed=7))
    imgs = [Image.fromarray(x) for x in coins.images[:, 0]]
    mirror = Image.Transpose.FLIP_LEFT_RIGHT
    allim = [*imgs, imgs[3].transpose(mirror), imgs[4].transpose(mirror).resize((96, 96), Image.BICUBIC)]
    thumbs = np.stack([np.asarray(i.convert("L").resize((32, 32), Image.BILINEAR)) for i in allim])
    fine = np.stack([np.asarray(i.convert("L").resize((64, 64), Image.BILINEAR)) for i in allim])
    res = find_near_duplicates(thumbs, NearDupParams(mirrors=True), fine=fine)
    groups = [set(g) for g in connected_groups(len(allim), res.pairs)]
    assert {3, 200} in groups and {4, 201} in groups and len(groups) <= 3
    found = {tuple(sorted(p)): m for p, m in zip(res.pairs.tolist(), res.mirrored.tolist(), strict=True)}
    assert found[(3, 200)] and found[(4, 201)]
    plain = find_near_duplicates(thumbs, fine=fine)  # the default: mirrors are not searched
    pairs = {tuple(sorted(p)) for p in plain.pairs.tolist()}
    assert (3, 200) not in pairs and (4, 201) not in pairs  # the coins are not mirror-symmetric


def test_connected_groups():
    assert connected_groups(6, np.array([[0, 1], [1, 2], [4, 5]])) == [[0, 1, 2], [4, 5]]


def test_merge_groups_joins_chains_and_drops_singletons():
    # b~c links the first two groups; a group that collapses to one name is not a group
    groups = [["c", "a"], ["x", "y"], ["b", "c"], ["z", "z"], []]
    assert merge_groups(groups) == [["a", "b", "c"], ["x", "y"]]
    assert merge_groups(reversed(groups)) == merge_groups(groups)
    assert merge_groups([]) == []


def _composite(rng: np.random.Generator, size: int = 192) -> np.ndarray:
    """Two textured discs side by side on white, like a museum photo of both sides of a coin."""
    from PIL import Image

    h, w = size // 2, size
    img = np.full((h, w), 255.0)
    yy, xx = np.mgrid[:h, :w]
    for cx in (w // 4, 3 * w // 4):
        disc = (yy - h / 2) ** 2 + (xx - cx) ** 2 < (0.45 * h) ** 2
        tex = np.asarray(Image.fromarray(rng.integers(40, 140, (48, 96), dtype=np.uint8)).resize((w, h)))
        img[disc] = tex[disc]
    return img.astype(np.uint8)


def test_composites_on_white_are_not_near_duplicates_of_each_other():
    from PIL import Image

    rng = np.random.default_rng(1)
    imgs = [Image.fromarray(_composite(rng)) for _ in range(40)]
    imgs.append(imgs[0].resize((150, 75), Image.BICUBIC))  # the same photo, rescaled
    thumbs = np.stack([np.asarray(i.resize((32, 32), Image.BILINEAR)) for i in imgs])
    fine = np.stack([np.asarray(i.resize((64, 64), Image.BILINEAR)) for i in imgs])
    res = find_near_duplicates(thumbs, fine=fine)
    assert [set(g) for g in connected_groups(len(imgs), res.pairs)] == [{0, 40}]


def test_the_audit_never_imports_torch(messy, tmp_path):
    """torch alone costs 0.65 GB of memory before any work; `camscope audit` needs none of it."""
    import subprocess
    import sys

    from tests.helpers import COIN_OPTS, ENV

    manifest, _ = messy
    args = ["audit", str(manifest), "--out", str(tmp_path / "a"), *COIN_OPTS]
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from camscope.cli import app\n"
        f"args = {args!r}\n"
        "r = CliRunner().invoke(app, args)\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["near_duplicate_groups"]


def _comparable(report: dict) -> str:
    """The report without its clock, as JSON text (a blank picture's sharpness is NaN, which
    compares unequal to itself as a float)."""
    kept = {k: v for k, v in report.items() if k not in ("created", "timing_s", "resumed_images")}
    return json.dumps(kept, sort_keys=True)


def test_a_killed_audit_resumes_from_its_saved_scan(messy, tmp_path, monkeypatch):
    from camscope.data import audit as audit_mod
    from camscope.data.audit import AuditConfig

    manifest, _ = messy
    src = CsvSource(manifest, patterns=[HEADS, TAILS], label_from="Obverse", label_regex=LABEL_REGEX)
    fresh = audit(src, AuditConfig(workers=1))
    cache = tmp_path / "cache"
    cfg = AuditConfig(workers=1, chunk=16, cache_dir=cache, cache_every=16)
    real = audit_mod._scan_chunk
    calls: list[int] = []

    def dies_on_the_fifth_chunk(keys):
        calls.append(len(keys))
        if len(calls) == 5:
            raise KeyboardInterrupt  # as a kill would stop it
        return real(keys)

    monkeypatch.setattr(audit_mod, "_scan_chunk", dies_on_the_fifth_chunk)
    with pytest.raises(KeyboardInterrupt):
        audit(src, cfg)
    assert len(list(cache.glob("part-*.npz"))) == 4  # four chunks were saved before the kill
    calls.clear()
    monkeypatch.setattr(audit_mod, "_scan_chunk", lambda keys: calls.append(len(keys)) or real(keys))
    resumed = audit(src, cfg)
    assert resumed["resumed_images"] == 64 and sum(calls) == fresh["n_images"] - 64
    assert _comparable(resumed) == _comparable(fresh)
    # another source's cache is not reused: it is cleared and everything is scanned again
    calls.clear()
    other = CsvSource(manifest, patterns=[HEADS], label_from="Obverse", label_regex=LABEL_REGEX)
    assert audit(other, cfg)["resumed_images"] == 0 and sum(calls) == len(other.items)


def test_the_cli_removes_its_scan_cache_and_nothing_else(class_tree, tmp_path):
    from camscope.cli import app
    from camscope.data.audit import SCAN_CACHE
    from tests.helpers import runner

    out = tmp_path / "audit"
    (out / SCAN_CACHE).mkdir(parents=True)
    (out / SCAN_CACHE / "mine.txt").write_text("keep me")  # not the cache's own file
    res = runner.invoke(app, ["audit", str(class_tree), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert (out / "audit.json").is_file() and (out / SCAN_CACHE / "mine.txt").read_text() == "keep me"
    assert not list((out / SCAN_CACHE).glob("part-*"))
    assert not (out / SCAN_CACHE / "fingerprint.json").exists()
    (out / SCAN_CACHE / "mine.txt").unlink()
    assert runner.invoke(app, ["audit", str(class_tree), "--out", str(out)]).exit_code == 0
    assert not (out / SCAN_CACHE).exists()


@pytest.mark.slow
def test_an_audit_killed_by_sigkill_resumes(tmp_path):
    import signal
    import subprocess
    import time

    from camscope.data.audit import SCAN_CACHE
    from tests.helpers import CLI, ENV, jpeg_bytes, random_image

    rng = np.random.default_rng(3)
    root = tmp_path / "tree"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4000):  # a part is saved every 4,096 images: the kill falls in the second
            (root / c / f"{i:04d}.jpg").write_bytes(jpeg_bytes(random_image(rng, 48)))
    ref, out = tmp_path / "ref", tmp_path / "out"
    args = ["audit", str(root), "--workers", "1", "--no-near-duplicates"]
    assert subprocess.run([*CLI, *args, "--out", str(ref)], env=ENV, capture_output=True).returncode == 0
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    p = subprocess.Popen([*CLI, *args, "--out", str(out)], env=ENV, **quiet)
    try:
        deadline = time.monotonic() + 120
        while not list((out / SCAN_CACHE).glob("part-*.npz")):
            assert p.poll() is None and time.monotonic() < deadline, "the audit ended before saving a part"
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert not (out / "audit.json").exists()
    done = subprocess.run([*CLI, *args, "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "audit.json").read_text())
    assert report["resumed_images"] > 0
    assert _comparable(report) == _comparable(json.loads((ref / "audit.json").read_text()))


def test_the_grey_test_percentile_is_numpys():
    from camscope.data.audit import _percentile_99

    rng = np.random.default_rng(2)
    for n in (1, 2, 7, 1024, 3000):
        for _ in range(50):
            x = rng.integers(0, rng.integers(1, 40), n).astype(np.int16)
            assert _percentile_99(x) == float(np.percentile(x, 99))
