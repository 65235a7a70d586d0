"""Data in: the built-in multi-site phantom and the paper's simulated shifts."""
