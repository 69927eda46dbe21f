"""`camscope serve RUN`: a small web page to classify an image and see its CAM next to it.

FastAPI + uvicorn: the page is one static HTML file, everything else is a JSON API, so the same
endpoints serve the page, scripts and the tests. The model is loaded once; explanations attach
hooks to it, so requests run one at a time through a lock (a 2-core CPU gains nothing from more).

What it refuses, with a 4xx and a one-line message: bodies over ``max_bytes`` (413), files that
are not images by their content whatever their name (415), images over ``max_pixels`` (413),
unknown methods, layers, classes or test indices (422 / 404). Nothing in a request names a file:
the only files served are the page, the run's report and test images by index.
"""

from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import Image

from camscope.data.imageio import ImageProblem
from camscope.data.prepare import prepare_encoded
from camscope.errors import CamscopeError
from camscope.explain.engine import saliency_maps
from camscope.explain.overlay import overlay
from camscope.explain.registry import names
from camscope.figures import displayable
from camscope.runs import open_run

STATIC = Path(__file__).parent / "static"
PAGE_METHODS = names()
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000


def _png(arr: np.ndarray | torch.Tensor, scale: int = 1) -> str:
    """(3, H, W) uint8 -> a PNG data URI, scaled up with nearest neighbour for small images."""
    a = arr.numpy() if isinstance(arr, torch.Tensor) else arr
    img = Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class Explainer:
    """The run's model and preparation, and one explanation at a time."""

    def __init__(self, run_dir: Path, prepared: Path | None, device: str, max_pixels: int):
        run = open_run(run_dir, prepared, device, need_data=False)
        self.run = run.dir
        self.model, self.meta, self.prep = run.model, run.meta, run.prep
        self.device = device
        self.spec = run.prepared_spec()
        self.sides = int(self.spec.get("sides", 1))
        self.classes: list[str] = self.meta["classes"]
        self.default_layer = self.meta.get("cam_layer")
        convs = [n for n, m in self.model.named_modules() if isinstance(m, torch.nn.Conv2d)]
        self.layers = [self.default_layer, *[n for n in convs if n != self.default_layer]]
        self.max_pixels = max_pixels
        self.lock = threading.Lock()
        self.test_images = self.test_labels = None
        self.test_ids: list[str] = []
        if prepared is not None:
            self.test_images, self.test_labels, self.test_ids = run.split_tensors("test")

    def test_image(self, index: int) -> torch.Tensor:
        if self.test_images is None:
            raise HTTPException(404, "no test set: start the server with --data PREPARED")
        if not 0 <= index < len(self.test_ids):
            raise HTTPException(404, f"test image {index} does not exist (0..{len(self.test_ids) - 1})")
        return self.test_images[index : index + 1]

    def prepare(self, blobs: list[bytes]) -> torch.Tensor:
        if len(blobs) != self.sides:
            raise HTTPException(
                422, f"this model takes {self.sides} image(s) per object (one per side); got {len(blobs)}"
            )
        try:
            arr = prepare_encoded(blobs, self.spec, self.max_pixels)
        except ImageProblem as e:
            code = 413 if e.kind == "too_large" else 415
            raise HTTPException(code, f"not accepted: {e.kind}: {e.detail}") from None
        return torch.from_numpy(arr)[None]

    def explain(self, x: torch.Tensor, method: str, layer: str | None, target: str, top_k: int) -> dict:
        if method not in PAGE_METHODS:
            raise HTTPException(422, f"unknown method {method!r}; choose one of {', '.join(PAGE_METHODS)}")
        if layer and layer not in self.layers:
            raise HTTPException(422, f"unknown layer {layer!r}; see /api/info for the model's layers")
        if target != "pred" and target not in self.classes:
            raise HTTPException(422, f"unknown class {target!r}; use 'pred' or one of the model's classes")
        with self.lock:
            xp = self.prep(x.to(self.device))
            with torch.no_grad():
                probs = self.model.eval()(xp).float().softmax(1)[0].cpu()
            conf, idx = probs.topk(min(top_k, len(self.classes)))
            t = int(idx[0]) if target == "pred" else self.classes.index(target)
            layers = None if not layer or layer == self.default_layer else [layer]
            try:
                cam = saliency_maps(self.model, xp, method, torch.tensor([t]), layers).cpu()
            except CamscopeError as e:
                raise HTTPException(422, e.message) from None
        scale = max(1, 256 // x.shape[-2])
        return {
            "top_k": [
                {"label": self.classes[int(i)], "confidence": float(c)}
                for c, i in zip(conf, idx, strict=True)
            ],
            "target": self.classes[t],
            "method": method,
            "layer": layer or self.default_layer,
            "image": _png(displayable(x)[0], scale),
            "overlay": _png(overlay(x, cam)[0], scale),
        }


def create_app(
    run_dir: str | Path,
    prepared: str | Path | None = None,
    device: str = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: str | Path | None = None,
) -> FastAPI:
    run = Path(run_dir).resolve()
    ex = Explainer(run, Path(prepared) if prepared else None, device, max_pixels)
    report_path = Path(report).resolve() if report else _find_report(run)
    app = FastAPI(title="camscope", docs_url=None, redoc_url=None, openapi_url=None)
    _limit_bodies(app, ex, max_bytes)
    _page_and_info(app, ex, max_bytes, report_path)
    _test_images(app, ex)
    _explain(app, ex, max_bytes)
    return app


def _find_report(run: Path) -> Path | None:
    # a training run's own report, or the study's (RUN/<experiment>/candidates/<name>/)
    for cand in (run / "report.html", run.parent.parent.parent / "report.html"):
        if cand.is_file():
            return cand
    return None


def _limit_bodies(app: FastAPI, ex: Explainer, max_bytes: int) -> None:
    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        # refuse early on the declared size; the upload reader enforces it on the real bytes too
        length = request.headers.get("content-length")
        limit = ex.sides * max_bytes + 64 * 1024  # one file per side plus the form's overhead
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(
                {"detail": f"request larger than {limit} bytes; each file may have {max_bytes}"},
                status_code=413,
            )
        return await call_next(request)


def _page_and_info(app: FastAPI, ex: Explainer, max_bytes: int, report_path: Path | None) -> None:
    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/info")
    def info():
        return {
            "model": (ex.meta.get("model") or {}).get("name"),
            "classes": ex.classes,
            "methods": PAGE_METHODS,
            "layers": ex.layers,
            "default_layer": ex.default_layer,
            "sides": ex.sides,
            "side_names": ex.spec.get("side_names") or [f"side {i + 1}" for i in range(ex.sides)],
            "test_images": len(ex.test_ids),
            "report": report_path is not None,
            "max_bytes": max_bytes,
        }

    @app.get("/report")
    def report_page():
        if report_path is None:
            raise HTTPException(404, "this run has no report.html: camscope report RUN writes one")
        return FileResponse(report_path, media_type="text/html")


def _test_images(app: FastAPI, ex: Explainer) -> None:
    @app.get("/api/test-images")
    def test_images(offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500)):
        if ex.test_images is None:
            return {"total": 0, "items": []}
        end = min(len(ex.test_ids), offset + limit)
        return {
            "total": len(ex.test_ids),
            "items": [
                {"index": i, "id": ex.test_ids[i], "label": ex.classes[int(ex.test_labels[i])]}
                for i in range(offset, end)
            ],
        }

    @app.get("/api/test-images/{index}.png")
    def test_image_png(index: int):
        img = displayable(ex.test_image(index))[0].numpy().transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(img)).save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/api/explain-test/{index}")
    def explain_test(
        index: int, method: str = "gradcam", layer: str = "", target: str = "pred", top_k: int = 3
    ):
        res = ex.explain(ex.test_image(index), method, layer or None, target, top_k)
        res["true_label"] = ex.classes[int(ex.test_labels[index])]
        return res


def _explain(app: FastAPI, ex: Explainer, max_bytes: int) -> None:
    @app.post("/api/explain")
    async def explain_upload(
        files: list[UploadFile] = File(..., description="one image per side"),
        method: str = Form("gradcam"),
        layer: str = Form(""),
        target: str = Form("pred"),
        top_k: int = Form(3),
    ):
        blobs = []
        for f in files:
            data = await f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise HTTPException(413, f"{f.filename or 'upload'} is larger than {max_bytes} bytes")
            if not data:
                raise HTTPException(415, f"{f.filename or 'upload'} is empty")
            blobs.append(data)
        x = ex.prepare(blobs)
        return ex.explain(x, method, layer or None, target, top_k)


def serve(
    run_dir: str | Path,
    prepared: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: str | Path | None = None,
) -> None:
    import uvicorn

    app = create_app(run_dir, prepared, device, max_bytes, max_pixels, report)
    uvicorn.run(app, host=host, port=port, log_level="warning")
