"""yt-dlp plugin: the genie-pipeline sample corpus search (`gcsearchN:QUERY`).

yt-dlp finds plugins in `yt_dlp_plugins/extractor/*.py` on sys.path (a namespace package:
no __init__.py here). It only registers classes *defined* in this module whose names end in
"IE", so the class is subclassed here rather than re-exported.

    yt-dlp --extractor-args "geniecorpus:server=http://127.0.0.1:PORT" --flat-playlist -J "gcsearch5:pitfall speedrun"
"""
try:
    from genie_pipeline.corpus.search_ie import GenieCorpusSearchIE as _GenieCorpusSearchBase
except ImportError:  # the project is not importable here: register nothing
    __all__ = []
else:
    class GenieCorpusSearchIE(_GenieCorpusSearchBase):
        __doc__ = _GenieCorpusSearchBase.__doc__

    __all__ = ["GenieCorpusSearchIE"]
