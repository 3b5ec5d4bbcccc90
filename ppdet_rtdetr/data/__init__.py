"""Data helpers: synthetic demo dataset generation and dataset checks."""
