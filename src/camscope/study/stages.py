"""Stage bookkeeping for a study run folder: which stage ran with which inputs, and how it ended.

``RUN/stages.json`` maps each stage to the hash of its configuration and its upstream stages'
hashes, its status and a short summary. A stage whose hash is unchanged, that finished, and whose
outputs still exist is skipped; a failed stage is recorded with its error and the finished ones
stay as they are.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from camscope import __version__
from camscope.utils import atomic_write_text


@dataclass
class Stage:
    name: str  # unique, e.g. "train:top2"
    kind: str  # e.g. "train"
    config: dict  # everything that decides the stage's output
    inputs: list[str]  # upstream stage names
    run: Callable[[], dict]  # does the work, returns a JSON-able summary
    outputs: list[Path] = field(default_factory=list)  # must exist for a cached result to count


def stage_key(kind: str, config: dict, upstream: list[str]) -> str:
    blob = json.dumps(
        {"kind": kind, "config": config, "upstream": upstream, "version": __version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class StageLog:
    def __init__(self, root: Path):
        self.path = Path(root) / "stages.json"
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                self.entries = {}  # written atomically, so only a hand edit gets here: start over

    def _save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries, indent=1))

    def is_fresh(self, stage: Stage, key: str) -> bool:
        e = self.entries.get(stage.name)
        return bool(
            e and e.get("status") == "done" and e.get("key") == key and all(p.exists() for p in stage.outputs)
        )

    def started(self, stage: Stage, key: str) -> None:
        self.entries[stage.name] = {
            "kind": stage.kind,
            "key": key,
            "status": "running",
            "started": time.time(),
        }
        self._save()

    def finished(self, stage: Stage, key: str, seconds: float, summary: dict) -> None:
        self.entries[stage.name] = {
            "kind": stage.kind,
            "key": key,
            "status": "done",
            "seconds": round(seconds, 2),
            "finished": time.time(),
            "summary": summary,
        }
        self._save()

    def failed(self, stage: Stage, key: str, seconds: float, error: str) -> None:
        self.entries[stage.name] = {
            "kind": stage.kind,
            "key": key,
            "status": "failed",
            "seconds": round(seconds, 2),
            "error": error,
        }
        self._save()
