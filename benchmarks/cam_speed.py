"""CAM speed, side by side: camscope vs pytorch-grad-cam 1.5.7 vs Captum 0.9.0.

Same model, same inputs, same device, one process. The implementations are interleaved for
real: after one warm-up call each, every round times one call of each, in alternating order
(A B C, then C B A, ...), and each figure is the median over --rounds. Every row also reports the
largest difference between our maps and pytorch-grad-cam's (they must agree to 1e-5).

    .venv/bin/python benchmarks/cam_speed.py [--rounds 5] [--device cpu] [--run RUN ...]

Cases: (a) torchvision resnet18 at 224x224 with random weights, batch 32 (Score-CAM on
--score-images of them: it costs 512 forward passes per image); (b) camscope's fastnet at 32x32
with random weights, batch 256 (Score-CAM on --score-images-small); then each --run: a trained
run on its own test images (its model, CAM layer and preprocessing), batch --batch.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import torch
import torchvision

from camscope.explain.engine import explain
from camscope.models import build_model

REF = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "layercam": "LayerCAM", "scorecam": "ScoreCAM"}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict, rounds: int, device) -> tuple[dict[str, float], dict]:
    """Median seconds per call of each function, timed in alternating order; their last outputs."""
    out = {k: f() for k, f in fns.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in order if r % 2 == 0 else order[::-1]:
            _sync(device)
            t = time.perf_counter()
            out[k] = fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}, out


def run_case(name, model, layer_name, x, methods, rounds, device, score_n):
    import pytorch_grad_cam
    from captum.attr import LayerGradCam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = model.to(device).eval()
    x = x.to(device)
    layer = model.get_submodule(layer_name)
    with torch.no_grad():
        targets = model(x).argmax(1)
    rows = []
    for m in methods:
        xs, ts = (x[:score_n], targets[:score_n]) if m == "scorecam" else (x, targets)
        n = len(xs)

        def ours(xs=xs, ts=ts, m=m):
            return explain(model, xs, m, targets=ts, layers=[layer_name]).first()

        def theirs(xs=xs, ts=ts, m=m):
            cam = getattr(pytorch_grad_cam, REF[m])(model=model, target_layers=[layer])
            if m == "scorecam":
                cam.batch_size = 16  # its default
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bars
                out = cam(input_tensor=xs, targets=[ClassifierOutputTarget(int(t)) for t in ts])
            cam.activations_and_grads.release()
            return torch.from_numpy(out)

        fns = {"camscope": ours, "pytorch-grad-cam": theirs}
        if m == "gradcam":
            lgc = LayerGradCam(model, layer)

            def captum_fn(xs=xs, ts=ts, lgc=lgc):
                attr = lgc.attribute(xs, target=ts, relu_attributions=True)
                return torch.nn.functional.interpolate(attr, size=xs.shape[-2:], mode="bilinear")

            fns["captum"] = captum_fn
        secs, outs = interleaved(fns, rounds, device)
        diff = (outs["camscope"].cpu() - outs["pytorch-grad-cam"]).abs().max().item()
        row = {
            "case": name,
            "method": m,
            "images": n,
            "camscope": n / secs["camscope"],
            "pytorch-grad-cam": n / secs["pytorch-grad-cam"],
            "captum": n / secs["captum"] if "captum" in secs else None,
            "max_abs_diff": diff,
        }
        rows.append(row)
        print(
            f"{name:24} {m:10} n={n:4d}  camscope {row['camscope']:9.1f}  pytorch-grad-cam "
            f"{row['pytorch-grad-cam']:9.1f}  captum {row['captum'] or float('nan'):9.1f} img/s  "
            f"speed-up {row['camscope'] / row['pytorch-grad-cam']:5.2f}x  max|diff| {diff:.1e}",
            flush=True,
        )
    return rows


def trained_case(run_dir: str, batch: int, device):
    """(name, model, CAM layer, preprocessed test images) of a trained run."""
    from camscope.runs import open_run

    run = open_run(run_dir, device="cpu")
    images, _, _ = run.split_tensors("test")
    x = run.prep(images[:batch])
    name = f"{run.meta['model']['name']} trained {tuple(x.shape[-2:])} b{len(x)}"
    return name, run.model.float(), run.meta["cam_layer"], x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--score-images", type=int, default=2)
    ap.add_argument("--score-images-small", type=int, default=16)
    ap.add_argument("--methods", default="gradcam,gradcam++,layercam,scorecam")
    ap.add_argument("--run", action="append", default=[], help="a trained run, timed on its test images")
    ap.add_argument("--batch", type=int, default=32, help="images per call for --run cases")
    args = ap.parse_args()
    device = torch.device(args.device)
    methods = args.methods.split(",")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rows = run_case(
        "resnet18 random 224px b32",
        torchvision.models.resnet18(),
        "layer4",
        torch.randn(32, 3, 224, 224, generator=g),
        methods,
        args.rounds,
        device,
        args.score_images,
    )
    rows += run_case(
        "fastnet random 32px b256",
        build_model("fastnet", 10, 3, (32, 32)),
        "layers.2",
        torch.randn(256, 3, 32, 32, generator=g),
        methods,
        args.rounds,
        device,
        args.score_images_small,
    )
    for run_dir in args.run:
        name, model, layer, x = trained_case(run_dir, args.batch, device)
        rows += run_case(name, model, layer, x, methods, args.rounds, device, args.score_images)
    print()
    print(
        "| case | method | images | camscope img/s | pytorch-grad-cam img/s | Captum img/s "
        "| speed-up vs pytorch-grad-cam | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        cap = f"{r['captum']:.1f}" if r["captum"] else "n/a"
        print(
            f"| {r['case']} | {r['method']} | {r['images']} | {r['camscope']:.1f} | "
            f"{r['pytorch-grad-cam']:.1f} | "
            f"{cap} | {r['camscope'] / r['pytorch-grad-cam']:.2f}x | {r['max_abs_diff']:.1e} |"
        )
    print(f"device: {device}, torch {torch.__version__}, threads {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
