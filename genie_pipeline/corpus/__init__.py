"""The embedded sample corpus: real simulator footage encoded like uploads, plus a local
video site that serves it.

- `generate.generate_corpus(out_dir, seed, size)` renders Atari (ale-py), robot-arm
  (pybullet) and, where importable, CoinRun (procgen) videos, degraded and broken files,
  a LeRobot v3.0 dataset, and writes `catalog.jsonl`.
- `serve.CorpusServer` serves a corpus directory over HTTP (Range, search, error routes).
- `search_ie.GenieCorpusSearchIE` is a yt-dlp search extractor (`gcsearchN:query`) that
  answers from that server, so the pipeline's search source runs offline.

This module imports nothing heavy: the yt-dlp plugin imports `search_ie` through it.
"""
from __future__ import annotations

__all__ = ["generate_corpus", "generate_lerobot", "cached_small_corpus", "CorpusServer", "serve_forever",
           "GenieCorpusSearchIE", "add_corpus_extractor"]


def __getattr__(name):  # lazy: keep `import genie_pipeline.corpus.search_ie` light
    if name in ("generate_corpus", "cached_small_corpus"):
        from . import generate
        return getattr(generate, name)
    if name == "generate_lerobot":
        from .lerobot import generate_lerobot
        return generate_lerobot
    if name in ("CorpusServer", "serve_forever"):
        from . import serve
        return getattr(serve, name)
    if name in ("GenieCorpusSearchIE", "add_corpus_extractor"):
        from . import search_ie
        return getattr(search_ie, name)
    raise AttributeError(name)
