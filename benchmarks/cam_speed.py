"""CAM speed, side by side: camscope vs pytorch-grad-cam 1.5.7 vs Captum 0.9.0.

Same model, same inputs, same device, one process; implementations are interleaved and each
timing is the median of --repeats runs after a warm-up. Every row also reports the largest
difference between our maps and pytorch-grad-cam's (they must agree to 1e-5).

    .venv/bin/python benchmarks/cam_speed.py [--repeats 3] [--device cpu]

Cases: (a) torchvision resnet18 at 224x224, batch 32 (Score-CAM on --score-images of them: it
costs 512 forward passes per image); (b) camscope's fastnet at 32x32, batch 256 (Score-CAM on
--score-images-small of them).
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


def timed(fn, repeats: int, device) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def run_case(name, model, layer_name, x, methods, repeats, device, score_n):
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

        t_ours, a = timed(ours, repeats, device)
        t_ref, b = timed(theirs, repeats, device)
        diff = (a.cpu() - b).abs().max().item()
        row = {
            "case": name,
            "method": m,
            "images": n,
            "camscope": n / t_ours,
            "pytorch-grad-cam": n / t_ref,
            "captum": None,
            "max_abs_diff": diff,
        }
        if m == "gradcam":
            lgc = LayerGradCam(model, layer)

            def captum_fn(xs=xs, ts=ts, lgc=lgc):
                attr = lgc.attribute(xs, target=ts, relu_attributions=True)
                return torch.nn.functional.interpolate(attr, size=xs.shape[-2:], mode="bilinear")

            t_cap, _ = timed(captum_fn, repeats, device)
            row["captum"] = n / t_cap
        rows.append(row)
        print(
            f"{name:24} {m:10} n={n:4d}  camscope {row['camscope']:9.1f}  pytorch-grad-cam "
            f"{row['pytorch-grad-cam']:9.1f}  captum {row['captum'] or float('nan'):9.1f} img/s  "
            f"speed-up {row['camscope'] / row['pytorch-grad-cam']:5.2f}x  max|diff| {diff:.1e}",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--score-images", type=int, default=2)
    ap.add_argument("--score-images-small", type=int, default=16)
    ap.add_argument("--methods", default="gradcam,gradcam++,layercam,scorecam")
    args = ap.parse_args()
    device = torch.device(args.device)
    methods = args.methods.split(",")
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    rows = run_case(
        "resnet18 224px b32",
        torchvision.models.resnet18(),
        "layer4",
        torch.randn(32, 3, 224, 224, generator=g),
        methods,
        args.repeats,
        device,
        args.score_images,
    )
    rows += run_case(
        "fastnet 32px b256",
        build_model("fastnet", 10, 3, (32, 32)),
        "layers.2",
        torch.randn(256, 3, 32, 32, generator=g),
        methods,
        args.repeats,
        device,
        args.score_images_small,
    )
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
