"""`camscope serve RUN`: a small web page to classify an image and see its CAM next to it.

FastAPI + uvicorn: the page is one static HTML file, everything else is a JSON API, so the same
endpoints serve the page, scripts and the tests. The model is loaded once; explanations attach
hooks to it, so they run one at a time through a lock (a 2-core CPU gains nothing from more), in
worker threads, so the event loop keeps answering `/api/info` and the page while one runs.

What it refuses, with a 4xx/5xx and a one-line message: bodies over the byte limit, counted as
they stream (413), bodies that do not arrive within ``upload_timeout_s`` (408), more files or
form fields than an explanation takes (400), files that are not images by their content whatever
their name (415), images over ``max_pixels`` (413, from the header or the frames of a container
before any decode), unknown methods, layers, classes, test indices or a top-k below 1 (422 / 404),
work that waits for the model past ``time_limit_s`` (503) or runs past it (504). Nothing in a
request names a file: the only files served are the page, the report the run's study recorded
(by its hash) and test images by index.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from PIL import Image
from starlette.datastructures import UploadFile

from camscope.data.imageio import ImageProblem
from camscope.data.prepare import prepare_encoded
from camscope.errors import CamscopeError
from camscope.explain.engine import saliency_maps
from camscope.explain.overlay import overlay
from camscope.explain.registry import names
from camscope.figures import displayable
from camscope.runs import open_run
from camscope.serve.limits import BodyLimit, Worker
from camscope.serve.reports import recorded_report

STATIC = Path(__file__).parent / "static"
PAGE_METHODS = names()
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_TIME_LIMIT_S = 60.0
DEFAULT_UPLOAD_TIMEOUT_S = 30.0
MAX_TOP_K = 1000


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
    """The run's model and preparation; explanations go through the worker one at a time."""

    def __init__(self, run_dir: Path, prepared: Path | None, device: str, max_pixels: int, worker: Worker):
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
        self.worker = worker
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

    def check(self, method: str, layer: str | None, target: str, top_k: int) -> None:
        """Refuse bad parameters before any work is queued."""
        if method not in PAGE_METHODS:
            raise HTTPException(422, f"unknown method {method!r}; choose one of {', '.join(PAGE_METHODS)}")
        if layer and layer not in self.layers:
            raise HTTPException(422, f"unknown layer {layer!r}; see /api/info for the model's layers")
        if target != "pred" and target not in self.classes:
            raise HTTPException(422, f"unknown class {target!r}; use 'pred' or one of the model's classes")
        if not 1 <= top_k <= MAX_TOP_K:
            raise HTTPException(422, f"top_k must be between 1 and {MAX_TOP_K}; got {top_k}")

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

    def explain(
        self, x: torch.Tensor, method: str, layer: str | None, target: str, top_k: int, deadline: float
    ) -> dict:
        """The prediction and CAM of ``x`` (parameters already checked by the caller)."""
        with self.worker.hold_model(deadline):
            xp = self.prep(x.to(self.device))
            with torch.no_grad():
                probs = self.model.eval()(xp).float().softmax(1)[0].cpu()
            if not torch.isfinite(probs).all():
                raise HTTPException(
                    500,
                    "the model gave NaN or infinite outputs for this image: its checkpoint is damaged; "
                    "serve another run or retrain",
                )
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

    def explain_upload(self, blobs: list[bytes], method, layer, target, top_k, deadline: float) -> dict:
        return self.explain(self.prepare(blobs), method, layer, target, top_k, deadline)


def create_app(
    run_dir: str | Path,
    prepared: str | Path | None = None,
    device: str = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: str | Path | None = None,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
) -> FastAPI:
    run = Path(run_dir).resolve()
    worker = Worker(time_limit_s)
    ex = Explainer(run, Path(prepared) if prepared else None, device, max_pixels, worker)
    report_file = Path(report).resolve() if report else None
    app = FastAPI(title="camscope", docs_url=None, redoc_url=None, openapi_url=None)
    # one file per side plus the form's few small fields
    app.add_middleware(BodyLimit, limit=ex.sides * max_bytes + 64 * 1024, timeout_s=upload_timeout_s)
    _page_and_info(app, ex, max_bytes, report_file)
    _test_images(app, ex)
    _explain(app, ex, max_bytes)
    return app


def _page_and_info(app: FastAPI, ex: Explainer, max_bytes: int, report_file: Path | None) -> None:
    def the_report() -> tuple[Path | None, str]:
        """The report to serve (the one named on the command line, else the one the run's study or
        `camscope report` recorded, if its hash still matches) and why there is none."""
        if report_file is not None:
            return (report_file, "") if report_file.is_file() else (None, f"{report_file} is gone")
        return recorded_report(ex.run)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/info")
    async def info():  # async: answered on the event loop even while every worker thread is busy
        return {
            "model": (ex.meta.get("model") or {}).get("name"),
            "classes": ex.classes,
            "methods": PAGE_METHODS,
            "layers": ex.layers,
            "default_layer": ex.default_layer,
            "sides": ex.sides,
            "side_names": ex.spec.get("side_names") or [f"side {i + 1}" for i in range(ex.sides)],
            "test_images": len(ex.test_ids),
            "report": the_report()[0] is not None,
            "max_bytes": max_bytes,
        }

    @app.get("/report")
    def report_page():
        path, why = the_report()
        if path is None:
            raise HTTPException(404, why)
        return HTMLResponse(path.read_bytes())


def _test_images(app: FastAPI, ex: Explainer) -> None:
    @app.get("/api/test-images")
    async def test_images(offset: int = Query(0, ge=0), limit: int = Query(48, ge=1, le=500)):
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
    async def explain_test(
        index: int,
        method: str = "gradcam",
        layer: str = "",
        target: str = "pred",
        top_k: int = Query(3, ge=1, le=MAX_TOP_K),
    ):
        x = ex.test_image(index)
        ex.check(method, layer or None, target, top_k)
        res = await ex.worker.run(ex.explain, x, method, layer or None, target, top_k)
        res["true_label"] = ex.classes[int(ex.test_labels[index])]
        return res


def _explain(app: FastAPI, ex: Explainer, max_bytes: int) -> None:
    fields = {"method": "gradcam", "layer": "", "target": "pred", "top_k": "3"}

    @app.post("/api/explain")
    async def explain_upload(request: Request):
        # parsed here, not by FastAPI, to cap the number of files, fields and a field's size
        form = await request.form(max_files=ex.sides, max_fields=len(fields), max_part_size=1024)
        try:
            files = form.getlist("files")
            unknown = sorted(set(form.keys()) - {"files", *fields})
            if unknown:
                raise HTTPException(
                    422, f"unknown form field(s) {', '.join(unknown)}; send files and {', '.join(fields)}"
                )
            if not files or not all(isinstance(f, UploadFile) for f in files):
                raise HTTPException(422, "send the images as multipart form field 'files' (one per side)")
            values = {k: str(form.get(k, d)) for k, d in fields.items()}
            try:
                top_k = int(values["top_k"])
            except ValueError:
                raise HTTPException(422, f"top_k must be a whole number; got {values['top_k']!r}") from None
            ex.check(values["method"], values["layer"] or None, values["target"], top_k)
            blobs = [await _read_upload(f, max_bytes) for f in files]
        finally:
            await form.close()
        return await ex.worker.run(
            ex.explain_upload, blobs, values["method"], values["layer"] or None, values["target"], top_k
        )


async def _read_upload(f: UploadFile, max_bytes: int) -> bytes:
    data = await f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{f.filename or 'upload'} is larger than {max_bytes} bytes")
    if not data:
        raise HTTPException(415, f"{f.filename or 'upload'} is empty")
    return data


def serve(
    run_dir: str | Path,
    prepared: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "cpu",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: str | Path | None = None,
    *,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    upload_timeout_s: float = DEFAULT_UPLOAD_TIMEOUT_S,
) -> None:
    import uvicorn

    app = create_app(
        run_dir,
        prepared,
        device,
        max_bytes,
        max_pixels,
        report,
        time_limit_s=time_limit_s,
        upload_timeout_s=upload_timeout_s,
    )
    # connections past limit_concurrency get 503; idle keep-alive connections close after 5 s
    uvicorn.run(app, host=host, port=port, log_level="warning", limit_concurrency=64, timeout_keep_alive=5)
