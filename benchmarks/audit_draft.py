"""The audit's scan of phone-sized JPEGs with JPEG draft mode (decode at 1/2, 1/4 or 1/8 scale)
against a full decode of the same files.

The set: Roman coin photos from the shared data, upscaled to 4000x3000 (about 12 megapixels, a
phone photo's size) and saved as JPEG q90, in one class folder. Both scans are the audit's own
(`camscope.data.audit.audit` on a FolderSource, near-duplicate search off so only the scan is
timed), alternated over ``--rounds``; "full" is the same audit with the draft hint removed from
every decode, so the files are decoded at full size and then reduced.

    .venv/bin/python benchmarks/audit_draft.py [--n 300] [--rounds 2]

The per-image ratio does not depend on the number of files, so a few hundred stand for the
10,000 of the issue (which would take 30 GB of disk here).
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ZIP = ROOT.parent / "shared" / "data" / "roman-coins.zip"
SIZE = (4000, 3000)


def _make(args: tuple[str, bytes]) -> None:
    path, raw = args
    img = Image.open(io.BytesIO(raw)).convert("RGB").resize(SIZE, Image.BICUBIC)
    img.save(path, "JPEG", quality=90)


def build(folder: Path, n: int) -> None:
    (folder / "coins").mkdir(parents=True, exist_ok=True)
    have = len(list((folder / "coins").glob("*.jpg")))
    if have >= n:
        return
    with zipfile.ZipFile(ZIP) as z:
        names = sorted(x for x in z.namelist() if x.endswith(".jpg"))[:n]
        jobs = [(str(folder / "coins" / Path(x).name), z.read(x)) for x in names]
    t = time.perf_counter()
    with Pool() as pool:
        pool.map(_make, jobs)
    print(f"built {n} images of {SIZE[0]}x{SIZE[1]} in {time.perf_counter() - t:.0f} s")


def scan_seconds(folder: Path, draft: bool) -> float:
    import camscope.data.sources as S
    from camscope.data.audit import AuditConfig, audit

    original = S.Source.load

    def full(self, key, draft=None):  # the same decode without the draft hint
        return original(self, key, None)

    S.Source.load = original if draft else full
    try:
        report = audit(S.FolderSource(folder), AuditConfig(near_duplicates=False))
    finally:
        S.Source.load = original
    return report["timing_s"]["scan"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--folder", type=Path, default=ROOT / "runs" / "bench" / "audit_draft")
    args = ap.parse_args()
    if not ZIP.is_file():
        raise SystemExit(f"{ZIP} not found: this benchmark needs the shared coin photos")
    build(args.folder, args.n)
    times: dict[str, list[float]] = {"draft": [], "full": []}
    for r in range(args.rounds):
        for mode in ("draft", "full") if r % 2 == 0 else ("full", "draft"):
            times[mode].append(scan_seconds(args.folder, mode == "draft"))
            print(f"round {r} {mode}: {times[mode][-1]:.1f} s", flush=True)
    d, f = statistics.median(times["draft"]), statistics.median(times["full"])
    print(f"\n| scan of {args.n} JPEGs {SIZE[0]}x{SIZE[1]} | median s | ms per image |")
    print("|---|---|---|")
    print(f"| full decode | {f:.1f} | {1000 * f / args.n:.0f} |")
    print(f"| draft decode (the audit) | {d:.1f} | {1000 * d / args.n:.0f} |")
    print(f"\ndraft is {f / d:.1f}x faster")


if __name__ == "__main__":
    main()
