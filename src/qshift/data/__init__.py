"""Datasets: the built-in benchmark generator and the Karpathy-style manifest format."""
