"""The notebook API: a finished run folder as Python objects.

import camscope
run = camscope.load_run("demo-output")
run.summary()                 # pandas: one row per experiment
run.per_class()               # pandas: precision / recall / F1 per class
run.predictions()             # pandas: one row per test image
run.cams("gradcam")           # torch maps + the ids they belong to
run.figure("confusion")       # a matplotlib figure
"""

from __future__ import annotations

import json
from pathlib import Path

from camscope.errors import CamscopeError


class RunResults:
    """Numbers, tables, maps and figures of a study run folder or a training run folder."""

    def __init__(self, root: str | Path):
        from camscope.report.results import collect_results

        self.root = Path(root).resolve()
        saved = self.root / "results.json"
        self.results = (
            json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else collect_results(self.root)
        )

    def __repr__(self) -> str:
        return f"RunResults({str(self.root)!r}, experiments={self.experiments})"

    @property
    def experiments(self) -> list[str]:
        return [e["name"] for e in self.results["experiments"]]

    def _exp(self, name: str | None) -> dict:
        exps = self.results["experiments"]
        if not exps:
            raise CamscopeError(f"{self.root} holds no experiments yet", "run the study first")
        if name is None:
            return exps[0]
        for e in exps:
            if e["name"] == name:
                return e
        raise CamscopeError(f"no experiment {name!r}", f"experiments: {', '.join(self.experiments)}")

    def _run(self, name: str | None) -> dict:
        e = self._exp(name)
        if "run" not in e:
            raise CamscopeError(f"experiment {e['name']} has no trained model", "run its training stage")
        return e["run"]

    def run_dir(self, experiment: str | None = None) -> Path:
        return (self.root / self._run(experiment)["run_dir"]).resolve()

    # -- tables ------------------------------------------------------------------------------
    def summary(self):
        """One row per experiment: model, test accuracy and macro-F1 with 95% intervals."""
        import pandas as pd

        rows = []
        for e in self.results["experiments"]:
            run = e.get("run") or {}
            m = (run.get("evaluation") or {}).get("all") or {}
            ci = m.get("ci", {})
            rows.append(
                {
                    "experiment": e["name"],
                    "model": (run.get("model") or {}).get("name"),
                    "classes": len(run.get("classes") or []),
                    "test_n": m.get("n"),
                    "accuracy": m.get("accuracy"),
                    "accuracy_lo": (ci.get("accuracy") or [None, None])[0],
                    "accuracy_hi": (ci.get("accuracy") or [None, None])[1],
                    "macro_f1": (m.get("macro") or {}).get("f1"),
                    "leak_free_accuracy": (run.get("evaluation") or {}).get("leak_free", {}).get("accuracy"),
                    "train_seconds": run.get("train_seconds"),
                }
            )
        return pd.DataFrame(rows).set_index("experiment")

    def metrics(self, experiment: str | None = None) -> dict:
        """The evaluation as a dict (all test items and the leak-free subset)."""
        ev = self._run(experiment).get("evaluation")
        if ev is None:
            raise CamscopeError("this run was not evaluated", "add 'evaluate' to the experiment's analyses")
        return ev

    def per_class(self, experiment: str | None = None):
        import pandas as pd

        return pd.DataFrame(self.metrics(experiment)["all"]["per_class"]).set_index("class")

    def confusion(self, experiment: str | None = None, normalised: bool = False):
        import pandas as pd

        m = self.metrics(experiment)["all"]
        classes = self._run(experiment)["classes"]
        cm = m["confusion_normalised" if normalised else "confusion"]
        return pd.DataFrame(
            cm, index=pd.Index(classes, name="true"), columns=pd.Index(classes, name="predicted")
        )

    def history(self, experiment: str | None = None):
        import pandas as pd

        return pd.DataFrame(self._run(experiment)["history"]).set_index("epoch")

    def predictions(self, experiment: str | None = None):
        import pandas as pd

        path = self.run_dir(experiment) / "eval" / "predictions.csv"
        if not path.is_file():
            raise CamscopeError(f"{path} not found", "evaluate the run first")
        return pd.read_csv(path)

    def masking(self, experiment: str | None = None):
        import pandas as pd

        path = self.run_dir(experiment) / "probes" / "masking" / "masking.csv"
        if not path.is_file():
            raise CamscopeError("this run has no masking sweep", "add 'mask' to the experiment's analyses")
        return pd.read_csv(path)

    def unseen(self, experiment: str | None = None) -> dict:
        u = self._run(experiment).get("unseen")
        if u is None:
            raise CamscopeError(
                "this run has no unseen-class probe", "add 'unseen' to the experiment's analyses"
            )
        return u

    # -- maps and figures --------------------------------------------------------------------
    def cams(self, method: str = "gradcam", experiment: str | None = None) -> dict:
        """The CAM maps of the gallery images: {'maps': (N, H, W) tensor, 'ids': [...]}."""
        from safetensors import safe_open

        path = self.run_dir(experiment) / "explain" / f"{method}_maps.safetensors"
        if not path.is_file():
            raise CamscopeError(f"no {method} maps in this run", f"camscope explain RUN --method {method}")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            return {
                "maps": f.get_tensor("maps"),
                "rows": f.get_tensor("rows"),
                "ids": json.loads(meta.get("ids", "[]")),
            }

    def figures(self, experiment: str | None = None) -> dict[str, Path]:
        run = self._run(experiment)
        out = {k: self.root / v for k, v in run.get("figures", {}).items()}
        for g in run.get("galleries", []):
            out[Path(g["file"]).stem] = self.root / g["file"]
        return out

    def figure(self, name: str, experiment: str | None = None):
        """A saved figure (e.g. 'confusion', 'learning_curve', 'masking_curves') as a matplotlib figure."""
        figs = self.figures(experiment)
        if name not in figs:
            raise CamscopeError(f"no figure {name!r}", f"figures: {', '.join(sorted(figs))}")
        import matplotlib.image as mpimg
        import matplotlib.pyplot as plt

        img = mpimg.imread(figs[name])
        h, w = img.shape[:2]
        fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(img)
        ax.axis("off")
        return fig

    def report_path(self) -> Path:
        return self.root / "report.html"


def load_run(path: str | Path) -> RunResults:
    """Open a run folder written by ``camscope run`` (a study) or ``camscope train``."""
    p = Path(path)
    if not p.is_dir():
        raise CamscopeError(f"run folder {p} not found", "give the --out folder of camscope run or train")
    return RunResults(p)
