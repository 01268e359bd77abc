"""Experiment scripts and their TOML configs (nothing imports from here)."""
