"""The peer for the CIFAR-10 training benchmark: airbench94 from PyPI (`pip install airbench==0.1.8`),
run as published on the same JPEG data as camscope's rows, on this machine's CPU.

airbench is written for a CUDA GPU in fp16. To run it here, and nothing more, this script:
- points torch.cuda.Event / synchronize at the CPU clock, and Module.cuda / Module.half at no-ops,
  so the network and the data stay fp32 on the CPU (fp16 convolutions on a CPU are far slower);
- loads the data as CifarLoader expects it (cifar10/train.pt and test.pt: uint8 NHWC images,
  labels), written from camscope's prepared file of ../shared/data/cifar10-jpeg.zip.
The network, the hyperparameters (9.9 epochs, batch 1024, label smoothing 0.2, lookahead,
whitening, alternating flip, translate 2), the TTA (mirror + translate) and the code are airbench's.

    .venv/bin/python benchmarks/airbench_cpu.py [--seed 0] [--epochs 9.9]

total_s runs from the call of train94 to its return: the network built, the whitening set up,
every step; as for camscope's total_s, the data are decoded uint8 tensors in memory at the start.
The final test pass with airbench's TTA is timed on its own. A row is appended to
runs/bench/train_cifar10.jsonl and printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "runs" / "bench" / "airbench"


class _CpuEvent:
    """torch.cuda.Event on the CPU clock (the work is synchronous there)."""

    def __init__(self, enable_timing: bool = False):
        self.t = None

    def record(self, stream=None) -> None:
        self.t = time.perf_counter()

    def elapsed_time(self, end: _CpuEvent) -> float:
        return 1e3 * (end.t - self.t)


def cpu_shims() -> None:
    torch.cuda.Event = _CpuEvent
    torch.cuda.synchronize = lambda device=None: None
    nn.Module.cuda = lambda self, device=None: self
    nn.Module.half = lambda self: self  # fp32 throughout


def write_data(workdir: Path) -> Path:
    """cifar10/train.pt and test.pt in the layout airbench's CifarLoader reads."""
    folder = workdir / "cifar10"
    if (folder / "train.pt").is_file() and (folder / "test.pt").is_file():
        return folder
    import train_cifar10  # this folder's benchmark: the same prepared file as camscope's rows

    from camscope.data.prepare import load_prepared

    ds = load_prepared(train_cifar10.prepared_cifar())
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        idx = torch.tensor([k for k, s in enumerate(ds.given_splits) if s == split])
        images = ds.images[idx].permute(0, 2, 3, 1).contiguous()  # NCHW -> NHWC uint8
        data = {"images": images, "labels": ds.labels[idx].long(), "classes": list(ds.classes)}
        torch.save(data, folder / f"{split}.pt")
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=float, default=None, help="airbench94's default: 9.9")
    ap.add_argument("--train-limit", type=int, default=0, help="train on the first N images (smoke test)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu_shims()
    import airbench
    from airbench import lib_airbench94, utils

    folder = write_data(WORK)
    original_init = utils.CifarLoader.__init__

    def cpu_loader(self, path, *a, gpu=0, **kw):
        original_init(self, path, *a, gpu="cpu", **kw)
        self.images = self.images.float()  # fp32 on the CPU

    utils.CifarLoader.__init__ = cpu_loader
    os.chdir(folder.parent)  # train() opens its test loader at the relative path 'cifar10'
    hyp = lib_airbench94.hyp
    epochs = args.epochs or hyp["opt"]["train_epochs"]
    train_loader = utils.CifarLoader(
        "cifar10", train=True, batch_size=hyp["opt"]["batch_size"], aug=hyp["aug"], altflip=True
    )
    if args.train_limit:
        train_loader.images = train_loader.images[: args.train_limit]
        train_loader.labels = train_loader.labels[: args.train_limit]
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    model = airbench.train94(train_loader, epochs=epochs, verbose=False)
    total = time.perf_counter() - t0
    test_loader = utils.CifarLoader("cifar10", train=False, batch_size=2000)
    t1 = time.perf_counter()
    logits = utils.infer(model, test_loader, tta_level=hyp["net"]["tta_level"])
    eval_s = time.perf_counter() - t1
    import train_cifar10  # this folder's benchmark: the same metrics as camscope's rows

    metrics = train_cifar10.test_metrics(logits.argmax(1), test_loader.labels)
    row = {
        "date": time.strftime("%Y-%m-%d"),
        "row": f"peer: airbench94 (airbench {version('airbench')}, fp32 CPU) seed {args.seed}",
        "seed": args.seed,
        "settings": {"epochs": epochs, "batch_size": hyp["opt"]["batch_size"]},
        "train_images": len(train_loader.images),
        "total_s": round(total, 1),
        "final_eval_s": round(eval_s, 1),
        "tta": "mirror + translate (tta_level 2)",
        **metrics,
    }
    log = ROOT / "runs" / "bench" / "train_cifar10.jsonl"
    if not args.train_limit:
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
