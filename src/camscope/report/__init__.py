"""The report layer: results.json with every number, and one self-contained HTML page."""
