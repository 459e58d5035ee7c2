"""Evaluation: parsing and scoring generated images."""
