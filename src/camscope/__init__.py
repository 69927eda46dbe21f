"""camscope: train image classifiers, measure them honestly, show why they decide what they decide."""

__version__ = "0.1.0"

__all__ = ["Study", "load_run", "__version__"]


def __getattr__(name: str):
    # lazy, so `import camscope` (and the CLI) stays fast
    if name == "Study":
        from camscope.study.config import Study

        return Study
    if name == "load_run":
        from camscope.api import load_run

        return load_run
    raise AttributeError(f"module 'camscope' has no attribute {name!r}")
