"""genie-pipeline: video curation, ingestion and training for Genie-style world models.

The card's folders (`shards/`, `filtering/`, `ingest/`, `training/`, `models/`) sit at the
repository root and import as `genie_pipeline.shards`, `genie_pipeline.ingest`, …: an
installed wheel places them inside this package (pyproject's `package-dir`), and in a
source checkout the root is added to this package's search path below, so one import name
serves both and nothing named `shards` or `models` lands in a user's site-packages.
"""
import os as _os

_here = _os.path.dirname(_os.path.abspath(__file__))
_root = _os.path.dirname(_here)
if (not _os.path.isdir(_os.path.join(_here, "shards"))
        and _os.path.isfile(_os.path.join(_root, "pyproject.toml"))
        and _os.path.isfile(_os.path.join(_root, "shards", "__init__.py"))):
    __path__.append(_root)  # noqa: F821 (a package's __path__)
