import json

import numpy as np

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
