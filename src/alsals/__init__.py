"""alsals: learning-rate-free training for PyTorch (work in progress)."""
__version__ = "0.1.0"
