"""Packages for pip and for Beam's `--setup_file ./setup.py` (Dataflow stages the package
with it); all other metadata lives in pyproject.toml.

One import name: the card's top-level folders install as `genie_pipeline.shards`,
`genie_pipeline.ingest`, … (package-dir mapping), so a user's site-packages gains no
`shards` or `models` module. A source checkout reaches them the same way through
`genie_pipeline/__init__.py`.
"""
from setuptools import find_namespace_packages, setup

CARD = ("shards", "filtering", "ingest", "training", "models")
EXCLUDE = ["*.__pycache__", "*.egg-info"]


def packages() -> list[str]:
    found = find_namespace_packages(include=["genie_pipeline", "genie_pipeline.*", "yt_dlp_plugins",
                                             "yt_dlp_plugins.*"], exclude=EXCLUDE)
    for top in CARD:
        found += [f"genie_pipeline.{p}" for p in find_namespace_packages(include=[top, f"{top}.*"], exclude=EXCLUDE)]
    return found


setup(packages=packages(), package_dir={f"genie_pipeline.{top}": top for top in CARD})
