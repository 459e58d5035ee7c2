"""Datasets: the synthetic `shapes` benchmark and data loading."""
