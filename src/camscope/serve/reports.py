"""Which report.html the web page may serve for a run: only one camscope recorded.

A report is served when the run folder itself (``camscope report RUN``) or the study folder the
run was trained in (``STUDY/<experiment>/candidates/<name>``) recorded it, with its hash, and the
file still has that hash. A ``report.html`` that merely happens to sit a few folders up is never
served.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from camscope.folders import recorded, run_kind

# where a study puts a trained run, relative to the study folder
_STUDY_DEPTH = 3


def recorded_report(run: Path) -> tuple[Path | None, str]:
    """(the report file, "") or (None, why there is none)."""
    owners = [run]
    study = run.parents[_STUDY_DEPTH - 1] if len(run.parents) >= _STUDY_DEPTH else None
    if study is not None and run_kind(study) == "study" and run.parent.name == "candidates":
        owners.append(study)
    for folder in owners:
        note = recorded(folder, "report")
        if not isinstance(note, dict) or not isinstance(note.get("file"), str):
            continue
        path = folder / Path(note["file"]).name
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None, f"the recorded report {path} is gone: camscope report {folder} writes it again"
        if digest != note.get("sha256"):
            return None, f"{path} changed since camscope wrote it: camscope report {folder} writes it again"
        return path, ""
    return None, "this run has no recorded report: camscope report RUN (or the study's folder) writes one"
