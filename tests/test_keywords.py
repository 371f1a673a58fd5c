import pytest

from genie_pipeline.filtering.keywords import KeywordFilter, filter_for
from genie_pipeline.filtering.config import KeywordsConfig, KeywordSet

DEFAULT = filter_for(KeywordsConfig(), "default")


@pytest.mark.parametrize("title, keep, reason", [
    ("Pitfall! (Atari 2600) Any% Speedrun in 4:32", True, ""),
    ("Montezuma's Revenge - Full Playthrough (No Commentary)", True, ""),
    ("SUPER MARIO BROS. WORLD RECORD", True, ""),
    ("Pitfall Movie Trailer Reaction", False, "excluded:movie"),
    ("Unboxing my Atari 2600 collection", False, "excluded:unboxing"),
    ("Kangaroo review", False, "excluded:review"),
    ("Pitfall", False, "no_action_term"),
    ("Cooking pasta speedrun", False, "no_include_term"),
    ("Marioland speedrun", False, "no_include_term"),  # whole words only
    ("Rungholt mario", False, "no_action_term"),  # "run" is not inside "Rungholt"
    ("super   Mario\tbros   lets play", True, ""),  # multi-word terms across whitespace
    ("Ｍａｒｉｏ ｓｐｅｅｄｒｕｎ", True, ""),  # full-width letters fold
])
def test_default_verdicts(title, keep, reason):
    v = DEFAULT(title)
    assert (v.keep, v.reason) == (keep, reason)


def test_matched_terms_are_recorded():
    v = DEFAULT("Celeste any% speedrun (world record)")
    assert {"celeste", "any%", "speedrun", "world record"} <= set(v.matched)


def test_hostile_titles():
    assert DEFAULT("../../etc/passwd Pitfall speedrun").keep
    assert DEFAULT("Pitfall\x00\x1b[31m speedrun\r\n").keep
    long = "Pitfall speedrun " + "x" * 10_000
    assert DEFAULT(long).keep
    assert not DEFAULT("x " * 5_000 + "pitfall speedrun").keep  # only the first kB are scanned


def test_descriptions_optional_and_sets():
    cfg = KeywordsConfig(fields=["title", "description"])
    f = filter_for(cfg, "default")
    assert f("Kuka run", "a pitfall clone").keep
    assert not filter_for(KeywordsConfig(), "default")("Kuka run", "a pitfall clone").keep
    robots = KeywordsConfig(sets={"robotics": KeywordSet(include=["robot", "arm"])})
    assert filter_for(robots, "robotics")("Kuka arm pick and place episode 3").keep
    assert filter_for(robots, "none")("anything at all").keep
    assert not KeywordFilter(KeywordSet(exclude=["toy"]), ["title"])("Toy robot").keep
