"""Probes: masking the centre or the rim, a class never seen, the features a model learnt."""
