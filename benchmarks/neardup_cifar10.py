"""Near-duplicate search on all 60,000 CIFAR-10 JPEGs, side by side with imagededup.

Both finders read the same folder: the 60,000 images of ../shared/data/cifar10-jpeg.zip written
out unchanged, plus planted copies of randomly chosen images (re-encoded, shifted, cropped,
recoloured, rescaled, brightened) whose originals we know. The script prints, for each finder,
its time, the groups it found, the recall on the planted copies by kind, how many test images
it puts with a training image, and how much the two finders agree. It writes contact sheets of
randomly drawn groups (found by both, only by camscope, only by the peer) for inspection by eye.

    .venv/bin/python benchmarks/neardup_cifar10.py [--planted 700] [--out runs/bench/neardup]

imagededup's CNN mode downloads MobileNetV3 weights on first use; offline it is reported as not
run, with the error.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

KINDS = ("reencode_q40", "shift_2px", "crop_10pct", "crop_asym", "recolour", "rescale_2x", "brightness")


def plant(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A modified copy of ``img`` and the format to save it in."""
    if kind == "reencode_q40":
        return img, "jpg40"
    if kind == "shift_2px":  # translate with edge replication, as a re-crop of the scene would
        dy, dx = (int(v) for v in rng.choice([-2, 2], 2))
        a = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)), mode="edge")
        return Image.fromarray(a[2 + dy : 34 + dy, 2 + dx : 34 + dx]), "png"
    if kind == "crop_10pct":
        return img.crop((2, 2, 30, 30)).resize((32, 32), Image.BICUBIC), "png"
    if kind == "crop_asym":
        return img.crop((3, 0, 32, 29)).resize((32, 32), Image.BICUBIC), "png"
    if kind == "recolour":
        a = np.asarray(img).astype(float)[..., [2, 0, 1]] * 0.9 + 15
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), "png"
    if kind == "rescale_2x":
        return img.resize((64, 64), Image.BICUBIC), "png"
    if kind == "brightness":
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(1.3)).enhance(0.8), "png"
    raise ValueError(kind)


def write_folder(zip_path: Path, root: Path, n_planted: int, seed: int) -> dict[str, tuple[str, str]]:
    """Extract the archive under ``root`` and add planted copies; returns copy -> (original, kind)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zip_path) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg"))
        for n in names:
            dest = root / n.split("/", 1)[1]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(zf.read(n))
        planted = {}
        for i, idx in enumerate(rng.choice(len(names), n_planted, replace=False)):
            kind = KINDS[i % len(KINDS)]
            orig = names[idx].split("/", 1)[1]
            img, fmt = plant(Image.open(io.BytesIO(zf.read(names[idx]))).convert("RGB"), kind, rng)
            cls = orig.split("/")[1]
            rel = f"train/{cls}/planted_{i:04d}.{'jpg' if fmt.startswith('jpg') else 'png'}"
            if fmt == "jpg40":
                img.save(root / rel, quality=40)
            else:
                img.save(root / rel)
            planted[rel] = (orig, kind)
    return planted


def group_index(groups: list[list[str]]) -> dict[str, int]:
    return {p: g for g, members in enumerate(groups) for p in members}


def components(pairs: dict[str, list[str]]) -> list[list[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, bs in pairs.items():
        for b in bs:
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    out = defaultdict(list)
    for x in parent:
        out[find(x)].append(x)
    return sorted((sorted(g) for g in out.values() if len(g) > 1), key=lambda g: g[0])


def summarise(name: str, groups: list[list[str]], seconds: float, planted: dict) -> dict:
    gi = group_index(groups)
    recall = {}
    for kind in KINDS:
        hits = [gi.get(copy, -1) == gi.get(orig, -2) for copy, (orig, k) in planted.items() if k == kind]
        recall[kind] = sum(hits) / max(1, len(hits))
    real = [[p for p in g if "planted_" not in p] for g in groups]
    real = [g for g in real if len(g) > 1]
    test_in_train = sum(
        sum(p.startswith("test/") for p in g) for g in real if any(p.startswith("train/") for p in g)
    )
    return {
        "finder": name,
        "seconds": round(seconds, 1),
        "groups_without_planted": len(real),
        "images_in_them": sum(map(len, real)),
        "test_images_with_train_dup": test_in_train,
        "planted_recall": recall,
    }


def sheet(groups: list[list[str]], root: Path, path: Path, n: int, rng: random.Random) -> list[list[str]]:
    chosen = rng.sample(groups, min(n, len(groups)))
    cell, width = 68, max((min(len(g), 6) for g in chosen), default=1)
    img = Image.new("RGB", (width * cell, max(1, len(chosen)) * cell), "white")
    for r, g in enumerate(chosen):
        for c, p in enumerate(g[:6]):
            im = Image.open(root / p).convert("RGB").resize((64, 64), Image.NEAREST)
            img.paste(im, (c * cell, r * cell))
    img.save(path)
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--zip", type=Path, default=Path("../shared/data/cifar10-jpeg.zip"))
    ap.add_argument("--planted", type=int, default=700)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench/neardup"))
    ap.add_argument("--phash-threshold", type=int, default=10, help="imagededup's default Hamming distance")
    args = ap.parse_args()
    if not args.zip.exists():
        raise SystemExit(f"{args.zip} not found: this benchmark needs ../shared/data/cifar10-jpeg.zip")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="camscope-neardup-"))
    try:
        root = tmp / "cifar"
        planted = write_folder(args.zip, root, args.planted, args.seed)
        print(f"folder: 60,000 CIFAR-10 images + {len(planted)} planted copies under {root}")
        rows, found = [], {}

        from camscope.data.audit import AuditConfig, audit
        from camscope.data.sources import FolderSource

        t = time.perf_counter()
        report = audit(FolderSource(root), AuditConfig())
        found["camscope"] = report["near_duplicate_groups"]
        rows.append(
            summarise("camscope audit (whole audit)", found["camscope"], time.perf_counter() - t, planted)
        )

        from imagededup.methods import PHash

        t = time.perf_counter()
        dup = PHash(verbose=False).find_duplicates(
            image_dir=root, max_distance_threshold=args.phash_threshold, recursive=True
        )
        found["phash"] = components({k: v for k, v in dup.items() if v})
        rows.append(
            summarise(
                f"imagededup PHash (d<={args.phash_threshold})",
                found["phash"],
                time.perf_counter() - t,
                planted,
            )
        )

        cnn_note = None
        try:
            from imagededup.methods import CNN

            t = time.perf_counter()
            dup = CNN(verbose=False).find_duplicates(
                image_dir=root, min_similarity_threshold=0.9, recursive=True
            )
            found["cnn"] = components({k: v for k, v in dup.items() if v})
            rows.append(
                summarise("imagededup CNN (sim>=0.9)", found["cnn"], time.perf_counter() - t, planted)
            )
        except Exception as e:  # noqa: BLE001 - offline, the weights cannot be fetched
            cnn_note = f"imagededup CNN not run: {type(e).__name__}: {str(e).splitlines()[0][:160]}"

        head = f"{'finder':34} {'s':>6} {'groups':>7} {'images':>7} {'test~train':>10}  " + " ".join(
            f"{k[:9]:>9}" for k in KINDS
        )
        print(head)
        for r in rows:
            rec = " ".join(f"{r['planted_recall'][k]:9.2f}" for k in KINDS)
            print(
                f"{r['finder']:34} {r['seconds']:6.1f} {r['groups_without_planted']:7d} "
                f"{r['images_in_them']:7d} {r['test_images_with_train_dup']:10d}  {rec}"
            )
        if cnn_note:
            print(cnn_note)

        # agreement on pairs of real images, and contact sheets for inspection by eye
        def pairs_of(groups):
            gi = group_index([[p for p in g if "planted_" not in p] for g in groups])
            by = defaultdict(list)
            for p, g in gi.items():
                by[g].append(p)
            return {(a, b) for g in by.values() for a in g for b in g if a < b}

        ours, theirs = pairs_of(found["camscope"]), pairs_of(found["phash"])
        print(f"pairs of real images: camscope {len(ours)}, PHash {len(theirs)}, both {len(ours & theirs)}")
        rng = random.Random(args.seed)
        ours_g = [g for g in found["camscope"] if not any("planted_" in p for p in g)]
        theirs_g = [g for g in found["phash"] if not any("planted_" in p for p in g)]
        our_keys = group_index(ours_g)
        their_keys = group_index(theirs_g)
        only_ours = [g for g in ours_g if not any(p in their_keys for p in g)]
        only_theirs = [g for g in theirs_g if not any(p in our_keys for p in g)]
        both = [g for g in ours_g if any(p in their_keys for p in g)]
        samples = {}
        for name, groups in (("both", both), ("camscope_only", only_ours), ("phash_only", only_theirs)):
            samples[name] = sheet(groups, root, args.out / f"sample_{name}.png", 20, rng)
            print(f"{name}: {len(groups)} groups; 20 drawn at random in {args.out / f'sample_{name}.png'}")
        (args.out / "neardup_cifar10.json").write_text(
            json.dumps({"rows": rows, "cnn": cnn_note, "samples": samples}, indent=1)
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
