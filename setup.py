"""Shim for Beam's `--setup_file ./setup.py` (Dataflow stages the package with it); all
metadata lives in pyproject.toml."""
from setuptools import setup

setup()
