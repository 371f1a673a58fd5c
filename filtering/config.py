"""The `keywords` and `filters` sections of pipeline.yaml (the quality classifier's own
settings: `filtering/quality/config.py`)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from genie_pipeline.filtering.quality.config import QualityConfig
from genie_pipeline.shards.config import Section


# ----------------------------------------------------------------------------- keywords
class KeywordSet(Section):
    """Terms matched case-insensitively as whole words (a term may be several words)."""

    include: list[str] = Field(default_factory=list)
    require: list[str] = Field(default_factory=list)
    exclude: list[str] = Field(default_factory=list)


DEFAULT_INCLUDE = [
    "platformer", "2d", "side-scroller", "side scroller", "mario", "super mario", "sonic",
    "mega man", "megaman", "celeste", "hollow knight", "cuphead", "shovel knight", "rayman",
    "donkey kong", "kirby", "castlevania", "metroid", "pitfall", "montezuma", "coinrun",
    "kangaroo", "spelunky", "super meat boy", "ori", "terraria", "contra", "retro",
]
DEFAULT_REQUIRE = [
    "speedrun", "speed run", "playthrough", "longplay", "gameplay", "walkthrough",
    "let's play", "lets play", "no commentary", "full game", "any%", "100%", "world record",
    "tas", "run",
]
DEFAULT_EXCLUDE = [
    "movie", "film", "unboxing", "trailer", "reaction", "review", "reviews", "podcast",
    "tutorial", "cosplay", "lego", "toy", "toys", "music video", "soundtrack", "ost",
    "compilation", "memes", "animation", "cartoon", "news", "interview", "asmr",
]


class KeywordsConfig(KeywordSet):
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    require: list[str] = Field(default_factory=lambda: list(DEFAULT_REQUIRE))
    exclude: list[str] = Field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    fields: list[Literal["title", "description"]] = Field(default_factory=lambda: ["title"])
    # Named term sets that a source selects with `keywords: NAME` (robotics data has its own
    # vocabulary, or none at all).
    sets: dict[str, KeywordSet] = Field(default_factory=dict)


# ------------------------------------------------------------------------------ filters
class HeuristicsConfig(Section):
    enabled: bool = True
    min_motion: float = Field(default=0.1, ge=0, description="percent of pixels changing per frame below: static")
    max_dark_fraction: float = Field(default=0.8, ge=0, le=1, description="share of near-black/blank frames above: black")
    min_unique_fraction: float = Field(default=0.25, ge=0, le=1, description="share of frames that change below: slideshow")
    max_cuts_per_min: float = Field(default=30.0, ge=0, description="scene cuts per minute above: rapid cuts")
    # a montage goes back to footage it showed before (filtering/heuristics.py `returns`); 6 a
    # minute: two returns in a 16 s clip reject it, one (a respawn that looks like the start) does not
    max_returns_per_min: float = Field(default=6.0, ge=0, description="shots per minute returning to earlier footage above: cuts")


class DedupeConfig(Section):
    enabled: bool = True
    # 24 of 128: every copy the tests make of the sample corpus (re-encodes, 8 % and 5 % corner
    # crops) is within 24 bits, windows of different games 36 or more apart (tests/test_dedupe.py)
    max_distance: int = Field(default=24, ge=0, le=40, description="fingerprint bits (of 128) two clips of one footage may differ in")


class FiltersConfig(Section):
    heuristics: HeuristicsConfig = Field(default_factory=HeuristicsConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)
