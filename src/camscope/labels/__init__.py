"""Images whose label is probably wrong: out-of-fold probabilities and confident learning."""
