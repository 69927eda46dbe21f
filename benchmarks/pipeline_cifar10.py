"""What the data pipeline alone buys: the same model, the same optimiser step, fed by two pipelines.

- torchvision: ImageFolder over the 50,000 training JPEGs + DataLoader (2 workers, persistent)
  + per-image RandomCrop(32, padding 4, reflect) + RandomHorizontalFlip + ToTensor + Normalize;
- camscope: the prepared uint8 tensor (decoded once by `camscope prepare`) + batched flip and
  4-px reflect translation on whole batches (camscope.train.augment), normalised on the batch.

Each model (ResNet-18 with the usual CIFAR stem, and camscope's fastnet) trains with both
pipelines by turns, several rounds, each turn for a fixed time after a few warm-up steps; the
table gives training images/s and, separately, how fast each pipeline delivers batches with no
model at all. The JPEG decode of `prepare` happens once per dataset and is reported on its own
(the one-off cost the tensor pipeline pays up front).

    .venv/bin/python benchmarks/pipeline_cifar10.py [--seconds 20] [--rounds 3] [--batch 256]

Run it on an otherwise idle machine. Results go to runs/bench/pipeline_cifar10.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
import train_cifar10  # this folder's benchmark: the same prepared file and extracted JPEGs

ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def torchvision_batches(batch: int):
    import torchvision
    from torchvision import transforms as T

    work = ROOT / "runs" / "bench" / "extracted"
    root = work / "cifar10-jpeg"
    if not root.is_dir():
        with zipfile.ZipFile(train_cifar10.ZIP) as zf:
            zf.extractall(work)
    tf = T.Compose(
        [
            T.RandomCrop(32, padding=4, padding_mode="reflect"),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    ds = torchvision.datasets.ImageFolder(root / "train", tf)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True
    )
    while True:
        yield from loader


def camscope_batches(batch: int):
    from camscope.data.prepare import load_prepared
    from camscope.train.augment import Augment

    ds = load_prepared(train_cifar10.prepared_cifar())
    train = torch.tensor([k for k, s in enumerate(ds.given_splits) if s == "train"])
    x_all, y_all = ds.images[train], ds.labels[train].long()
    aug = Augment(translate=4, flip="random")
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255
    gen = torch.Generator().manual_seed(0)
    epoch = 0
    while True:
        perm = torch.randperm(len(x_all), generator=gen)
        for s in range(len(perm) // batch):
            idx = perm[s * batch : (s + 1) * batch]
            p = aug.draw(idx, (32, 32), epoch, gen, 0)
            yield aug.apply((x_all[idx].float() - mean) / std, p), y_all[idx]
        epoch += 1


def make_model(name: str) -> torch.nn.Module:
    if name == "resnet18":
        import torchvision

        m = torchvision.models.resnet18(num_classes=10)
        m.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the usual CIFAR stem
        m.maxpool = torch.nn.Identity()
    else:
        from camscope.models.registry import build_model

        m = build_model("fastnet", 10, 3, (32, 32))
    return m.to(memory_format=torch.channels_last)


def measure(batches, model: torch.nn.Module | None, seconds: float, warmup: int = 3) -> float:
    """Images per second over ``seconds`` after ``warmup`` steps (no model: the pipeline alone)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True) if model else None

    def step() -> int:
        x, y = next(batches)
        if model is not None:
            loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return len(y)

    if model is not None:
        model.train()
    for _ in range(warmup):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=20.0, help="timed seconds per turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    if not train_cifar10.ZIP.is_file():
        raise SystemExit(f"{train_cifar10.ZIP} not found: this benchmark needs the shared CIFAR-10 JPEGs")
    torch.set_num_threads(os.cpu_count() or 1)
    t = time.perf_counter()
    from camscope.data.prepare import load_prepared

    prepared = train_cifar10.prepared_cifar()  # decoded once (timed only when it is made here)
    made_s = time.perf_counter() - t
    load_s = time.perf_counter()
    load_prepared(prepared)
    load_s = time.perf_counter() - load_s
    pipes = {"torchvision": torchvision_batches(args.batch), "camscope": camscope_batches(args.batch)}
    results: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for model_name in ("data only", "fastnet", "resnet18"):
            for pipe, batches in pipes.items():  # by turns: drift on the machine hits both alike
                model = None if model_name == "data only" else make_model(model_name)
                ips = measure(batches, model, args.seconds)
                results.setdefault((model_name, pipe), []).append(ips)
                print(f"round {r + 1}: {model_name:9s} {pipe:11s} {ips:8.0f} img/s", flush=True)
    rows = []
    for (model_name, pipe), v in results.items():
        rows.append({"model": model_name, "pipeline": pipe, "img_s_median": statistics.median(v), "img_s": v})
    out = {
        "date": time.strftime("%Y-%m-%d"),
        "batch": args.batch,
        "seconds_per_turn": args.seconds,
        "rounds": args.rounds,
        "prepare_made_here_s": round(made_s, 1),
        "prepared_load_s": round(load_s, 2),
        "rows": rows,
    }
    (ROOT / "runs" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "runs" / "bench" / "pipeline_cifar10.json").write_text(json.dumps(out, indent=1))
    print("model | pipeline | img/s (median of rounds) | camscope / torchvision")
    for model_name in ("data only", "fastnet", "resnet18"):
        tv = statistics.median(results[(model_name, "torchvision")])
        cs = statistics.median(results[(model_name, "camscope")])
        print(f"{model_name} | torchvision | {tv:.0f} |")
        print(f"{model_name} | camscope | {cs:.0f} | {cs / tv:.2f}x")
    print(f"prepared file loaded in {load_s:.2f} s")


if __name__ == "__main__":
    main()
