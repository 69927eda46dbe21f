"""What a run leaves behind as it goes: metrics.jsonl, metrics.csv, the learning curve, and
TensorBoard / MLflow when they are installed and asked for."""

from __future__ import annotations

import json
from pathlib import Path

from camscope.errors import CamscopeError
from camscope.utils import write_rows_csv


class RunLog:
    def __init__(
        self,
        run_dir: Path,
        enabled: bool,
        tensorboard: bool = False,
        mlflow_uri: str | None = None,
        params: dict | None = None,
    ):
        self.run_dir = run_dir
        self.enabled = enabled
        self.tb = None
        self.mlflow = None
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise CamscopeError(
                    "--tensorboard needs the tensorboard package", "pip install tensorboard"
                ) from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if mlflow_uri:
            try:
                import mlflow
            except ImportError as e:
                raise CamscopeError("--mlflow-uri needs the mlflow package", "pip install mlflow") from e
            mlflow.set_tracking_uri(mlflow_uri)
            try:
                mlflow.start_run(run_name=run_dir.name)
            except Exception as e:  # a store MLflow refuses, or a server that does not answer
                raise CamscopeError(
                    f"MLflow cannot log to {mlflow_uri}: {str(e).splitlines()[0][:300]}",
                    "check --mlflow-uri (a server, sqlite:///path/mlflow.db, or a folder's file:// URI "
                    "with MLFLOW_ALLOW_FILE_STORE=true)",
                ) from None
            mlflow.log_params({k: str(v)[:250] for k, v in (params or {}).items()})
            self.mlflow = mlflow

    def epoch(self, row: dict, history: list[dict]) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        self.write_csv(history)
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "epoch"}
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()
        if self.mlflow is not None:
            self.mlflow.log_metrics(numeric, step=int(row["epoch"]))

    def write_csv(self, history: list[dict]) -> None:
        write_rows_csv(self.run_dir / "metrics.csv", history)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def plot_learning_curve(history: list[dict], path: Path) -> Path | None:
    """Loss and accuracy against epoch for train and validation, as a PNG."""
    if not history:
        return None
    from camscope.figures import pyplot

    plt = pyplot()

    ep = [r["epoch"] for r in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, ax, label in (
        ("train_loss", a1, "train"),
        ("val_loss", a1, "validation"),
        ("train_acc", a2, "train (augmented)"),
        ("val_acc", a2, "validation"),
    ):
        pts = [(e, r[key]) for e, r in zip(ep, history, strict=True) if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", ms=3, label=label)
    a1.set(xlabel="epoch", ylabel="loss", title="loss")
    a2.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
