"""Study files (YAML): a whole analysis, run stage by stage into one folder with a report."""

from camscope.study.config import Study

__all__ = ["Study"]
