"""yt-dlp search extractor for the sample corpus server: `gcsearchN:QUERY`.

The pipeline's `search` source runs through yt-dlp exactly as for `ytsearchN:`; this
extractor answers from `serve.py`'s /search instead of YouTube, so it works offline.

Server base URL, first found wins:
  1. yt-dlp option `extractor_args={"geniecorpus": {"server": ["http://127.0.0.1:PORT"]}}`
     (CLI: `--extractor-args "geniecorpus:server=http://127.0.0.1:PORT"`)
  2. environment variable GENIE_CORPUS_URL

Entries are flat url results for the Generic extractor (a direct mp4 link):
`{"_type": "url", "url", "id", "title", "description", "duration", "ie_key": "Generic"}`, plus
`actions_url` (the video's true-actions sidecar) where the server gives one.

yt-dlp registers it through the plugin `yt_dlp_plugins/extractor/geniecorpus.py` wherever the
project is importable (the CLI and `yt_dlp.YoutubeDL` alike), so the pipeline's search source
needs no code of its own for it.
"""
from __future__ import annotations

import os

from yt_dlp.extractor.common import SearchInfoExtractor
from yt_dlp.utils import ExtractorError

ENV_VAR = "GENIE_CORPUS_URL"
ARG_KEY = "geniecorpus"


class GenieCorpusSearchIE(SearchInfoExtractor):
    """Search the genie-pipeline sample corpus server (offline stand-in for ytsearch)."""

    IE_NAME = "geniecorpus:search"
    IE_DESC = "genie-pipeline sample corpus search"
    _SEARCH_KEY = "gcsearch"
    _MAX_RESULTS = 1000
    _TESTS = []

    def _server(self) -> str:
        vals = self._configuration_arg("server", [], ie_key=ARG_KEY, casesense=True)
        url = (vals[0] if vals else None) or os.environ.get(ENV_VAR)
        if not url:
            raise ExtractorError(
                f"no corpus server: pass extractor_args {{'{ARG_KEY}': {{'server': ['http://HOST:PORT']}}}} "
                f"or set {ENV_VAR}", expected=True)
        return url.rstrip("/")

    def _get_n_results(self, query, n):
        n = self._MAX_RESULTS if n == float("inf") else int(n)
        data = self._download_json(f"{self._server()}/search", query, note="Searching the sample corpus",
                                   query={"q": query, "n": str(n)})
        entries = []
        for r in (data or {}).get("results", [])[:n]:
            if not r.get("url"):
                continue
            # a plain url result (url_result(ie="Generic") would smuggle a fragment into the URL)
            entry = {"_type": "url", "url": r["url"], "ie_key": "Generic", "id": r.get("id"),
                     "title": r.get("title"), "description": r.get("description"), "duration": r.get("duration")}
            if r.get("actions_url"):
                entry["actions_url"] = r["actions_url"]
            entries.append(entry)
        return self.playlist_result(entries, query, query)
