"""Models: a registry from name to builder (each with its default CAM layer and recipe)."""

from camscope.models.registry import ModelEntry, available, build_model, entry, register, registered

__all__ = ["ModelEntry", "available", "build_model", "entry", "register", "registered"]
