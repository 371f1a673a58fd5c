"""Keyword filter over titles (and optionally descriptions).

A candidate is kept when it matches at least one `include` term (if any are set), at least
one `require` term (if any are set) and no `exclude` term. Matching is case-insensitive and
whole-word: "run" matches "Any% Run" but not "Rungholt"; multi-word terms match across any
whitespace/punctuation between the words.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from genie_pipeline.filtering.config import KeywordSet, KeywordsConfig


def _normalise(text: str) -> str:
    # NFKC folds full-width letters and ligatures; control characters become spaces
    text = unicodedata.normalize("NFKC", text or "")
    return "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in text).casefold()


def _term_pattern(term: str) -> str:
    words = [re.escape(w) for w in _normalise(term).split()]
    # \w-boundaries, but terms may start/end with punctuation ("any%", "let's play")
    return r"(?<![\w])" + r"[\s\W_]+".join(words) + r"(?![\w])"


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str  # "" when kept; "excluded:<term>" | "no_include_term" | "no_action_term" | "no_text"
    matched: tuple[str, ...]


class KeywordFilter:
    """Compiled once per worker; `__call__` is cheap per candidate."""

    def __init__(self, terms: KeywordSet | None, fields: list[str], max_chars: int = 4096):
        self.enabled = terms is not None
        self.fields = fields
        # a 10 kB title is not worth scanning past the first few kB
        self.max_chars = max_chars
        t = terms or KeywordSet()
        self.groups = {name: self._compile(getattr(t, name)) for name in ("include", "require", "exclude")}

    @staticmethod
    def _compile(terms: list[str]) -> list[tuple[str, re.Pattern]]:
        return [(t, re.compile(_term_pattern(t))) for t in terms if t.strip()]

    def __call__(self, title: str, description: str = "") -> Verdict:
        if not self.enabled:
            return Verdict(True, "", ())
        text = " \n ".join(
            _normalise({"title": title, "description": description}[f][: self.max_chars]) for f in self.fields
        )
        hits = {name: [t for t, rx in group if rx.search(text)] for name, group in self.groups.items()}
        matched = tuple(hits["include"] + hits["require"] + hits["exclude"])
        if hits["exclude"]:
            return Verdict(False, f"excluded:{hits['exclude'][0]}", matched)
        if self.groups["include"] and not hits["include"]:
            # say so when there was nothing to match: a URL list filtered by keywords
            return Verdict(False, "no_include_term" if text.strip() else "no_text", matched)
        if self.groups["require"] and not hits["require"]:
            return Verdict(False, "no_action_term", matched)
        return Verdict(True, "", matched)


def filter_for(keywords: KeywordsConfig, selector: str) -> KeywordFilter:
    """The filter a source selects: "default", "none" or a name from `keywords.sets`."""
    if selector == "none":
        return KeywordFilter(None, keywords.fields)
    if selector == "default":
        return KeywordFilter(keywords, keywords.fields)
    return KeywordFilter(keywords.sets[selector], keywords.fields)
