"""The web page: the JSON API, what it refuses, a loopback load test and the page in Chromium."""

from __future__ import annotations

import io
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from camscope.data.messy import giant_png_header
from camscope.serve.app import create_app


def png_bytes(size: int = 20, seed: int = 0) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def served(tmp_path_factory, trained_run):
    tmp = tmp_path_factory.mktemp("serve")
    run, prepared = trained_run.copy(tmp / "run"), trained_run.prepared
    (run / "report.html").write_text("<html><body>the report</body></html>", encoding="utf-8")
    app = create_app(run, prepared, max_bytes=200_000, max_pixels=1_000_000)
    return app, run, prepared


@pytest.fixture(scope="module")
def client(served):
    return TestClient(served[0])


def upload(client, blobs, **form):
    files = [("files", (f"side{i}.png", b, "image/png")) for i, b in enumerate(blobs)]
    return client.post("/api/explain", files=files, data=form)


def test_info_and_test_images(client):
    info = client.get("/api/info").json()
    assert info["sides"] == 2 and len(info["classes"]) == 3  # the shared run leaves one class out
    assert info["layers"][0] == info["default_layer"] and "gradcam" in info["methods"]
    listing = client.get("/api/test-images?limit=5").json()
    assert listing["total"] > 0 and len(listing["items"]) == 5
    png = client.get("/api/test-images/0.png")
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert client.get("/").text.count("<script>") == 1
    assert client.get("/report").text == "<html><body>the report</body></html>"


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "guided_gradcam", "occlusion"])
def test_explain_a_test_image(client, method):
    res = client.get("/api/explain-test/3", params={"method": method, "target": "pred"})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["overlay"].startswith("data:image/png;base64,") and body["method"] == method
    top = sum(r["confidence"] for r in body["top_k"])
    assert 0.75 - 1e-6 <= top <= 1 + 1e-6 and len(body["top_k"]) == 3 and body["true_label"]


def test_upload_two_sides_with_a_chosen_class_and_layer(client):
    info = client.get("/api/info").json()
    res = upload(
        client,
        [png_bytes(seed=1), png_bytes(seed=2)],
        method="layercam",
        layer=info["layers"][-1],
        target=info["classes"][1],
    )
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["target"] == info["classes"][1] and body["layer"] == info["layers"][-1]


@pytest.mark.parametrize(
    "blobs, code, words",
    [
        ([b"this is not an image at all", png_bytes()], 415, "not_an_image"),
        ([b"", png_bytes()], 415, "empty"),
        ([png_bytes()[:60], png_bytes()], 415, "truncated"),
        ([giant_png_header(40000, 40000), png_bytes()], 413, "too_large"),
        ([b"x" * 300_000, png_bytes()], 413, "larger than"),
        ([png_bytes()], 422, "2 image(s) per object"),
    ],
)
def test_refusals_are_clear(client, blobs, code, words):
    res = upload(client, blobs)
    assert res.status_code == code, res.text
    assert words in res.json()["detail"]


def test_bad_parameters_and_paths(client):
    assert client.get("/api/explain-test/0?method=magic").status_code == 422
    assert client.get("/api/explain-test/0?layer=nope").status_code == 422
    assert client.get("/api/explain-test/0?target=dragon").status_code == 422
    assert client.get("/api/explain-test/99999").status_code == 404
    assert client.get("/api/test-images/-1.png").status_code == 404
    for path in ("/../../etc/passwd", "/api/test-images/..%2F..%2Fetc%2Fpasswd", "/static/../pyproject.toml"):
        res = client.get(path)
        assert res.status_code == 404 and "root:" not in res.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(served):
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(served[0], host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_loopback_load(live_server):
    import httpx

    methods = ["gradcam", "gradcam++", "layercam", "xgradcam"]
    n_test = httpx.get(f"{live_server}/api/info").json()["test_images"]

    def one(i: int) -> tuple[int, float]:
        t = time.perf_counter()
        with httpx.Client(timeout=30) as c:
            r = c.get(f"{live_server}/api/explain-test/{i % n_test}", params={"method": methods[i % 4]})
        return r.status_code, time.perf_counter() - t

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(200)))
    codes = [c for c, _ in results]
    lat = sorted(t for _, t in results)
    p50, p95 = statistics.median(lat), lat[int(0.95 * len(lat)) - 1]
    print(f"\n200 requests, 8 concurrent: p50 {1000 * p50:.0f} ms, p95 {1000 * p95:.0f} ms")
    assert codes.count(200) == 200, {c: codes.count(c) for c in set(codes)}
    assert p95 < 5.0


def test_page_in_chromium(live_server, tmp_path):
    import playwright.sync_api as pw  # a test dependency: missing, the suite fails

    from tests.browser import launch

    side = [tmp_path / "a.png", tmp_path / "b.png"]
    for i, p in enumerate(side):
        p.write_bytes(png_bytes(seed=10 + i))
    errors: list[str] = []
    with pw.sync_playwright() as p:
        browser = launch(p)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(live_server + "/")
            page.wait_for_selector("#tests img")
            inputs = page.query_selector_all("#uploads input[type=file]")
            assert len(inputs) == 2
            for inp, f in zip(inputs, side, strict=True):
                inp.set_input_files(str(f))
            page.click("#go-upload")
            page.wait_for_function("document.body.dataset.renders === '1'")
            first = page.get_attribute("#overlay", "src")
            page.select_option("#method", "gradcam++")
            page.wait_for_function("document.body.dataset.renders === '2'")
            assert page.get_attribute("#overlay", "src") != first
            assert "gradcam++" in page.inner_text("#view")
            page.click("#tests img >> nth=0")
            page.wait_for_function("document.body.dataset.renders === '3'")
            assert "true:" in page.inner_text("#view")
            assert page.inner_text("#error") == ""
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert not errors, errors
    assert Path(tmp_path / "page.png").stat().st_size > 10_000
