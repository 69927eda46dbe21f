"""Explanations: the CAM engine and its methods, overlays, faithfulness."""
