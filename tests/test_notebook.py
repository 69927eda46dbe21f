"""The example notebook runs top to bottom (slow: it runs the demo study)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_example_notebook_executes(tmp_path):
    try:  # make test-slow installs the notebook extra; without it this test fails, never skips
        import ipykernel  # noqa: F401
        import nbclient
        import nbformat
    except ImportError as e:
        pytest.fail(f"{e.name} is missing: pip install -e '.[notebook]' (make test-slow does)")
    nb = nbformat.read(ROOT / "examples" / "demo.ipynb", as_version=4)
    os.environ["CAMSCOPE_EXAMPLE_OUT"] = str(tmp_path / "run")
    try:
        nbclient.NotebookClient(
            nb, timeout=600, resources={"metadata": {"path": str(ROOT / "examples")}}
        ).execute()
    finally:
        os.environ.pop("CAMSCOPE_EXAMPLE_OUT", None)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert (tmp_path / "run" / "report.html").is_file()
    texts = " ".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "accuracy" in texts  # the summary table
    assert "max_softmax" in texts  # the unseen-class AUROCs
    assert "centre" in texts and "outer" in texts  # the masking pivot
