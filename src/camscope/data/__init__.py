"""Data layer: sources, audit, preparation, class selection, splits and synthetic coins."""
