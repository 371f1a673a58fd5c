"""The embedded sample corpus: real simulator footage encoded like uploads, plus a local
video site that serves it.

- `generate.generate_corpus(out_dir, seed, size)` renders Atari (ale-py), robot-arm
  (pybullet) and, where importable, CoinRun (procgen) videos, degraded and broken files,
  a LeRobot v3.0 dataset, and writes `catalog.jsonl`.
- `serve.CorpusServer` serves a corpus directory over HTTP (Range, search, error routes).
- `search_ie.GenieCorpusSearchIE` is a yt-dlp search extractor (`gcsearchN:query`) that
  answers from that server, so the pipeline's search source runs offline.
- `reference.reference_labels` labels clips from the catalog's `quality_label` (the corpus
  knows which videos it degraded), and `reference.demo_quality` is the demo's quality step.

This package's __init__ imports nothing: the yt-dlp plugin imports `search_ie` cheaply.
"""
