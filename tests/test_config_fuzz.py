"""Property tests (hypothesis, bounded) of what reads user-written files: the config loader and
the catalog readers. A malformed input is either accepted or refused with an error that
names where it is; never a traceback from deeper down."""
from __future__ import annotations

import json
import math

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genie_pipeline.config import ConfigError, check_train, load_config, parse_config
from genie_pipeline.ingest.sources import discover
from genie_pipeline.shards.records import Candidate, Failure
from tests.conftest import ROOT

SHIPPED = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

junk = st.one_of(
    st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2, 3, 1e300, -0.0, 0.5, "", "x", "1e9", ".inf", "161", "ytsearch", "none"]),
    st.text(max_size=12), st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _leaves(node, path=()):
    """Every path in the config, sections and lists included (a whole section can be junk too)."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, path + (i,))


PATHS = [p for p in _leaves(SHIPPED) if p]


def _replace(data, path, value):
    data = json.loads(json.dumps(data))
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return data


def _check(data, path):
    """Accepted (and then usable: clip spec, training config) or refused naming the place."""
    try:
        cfg = parse_config(data)
        cfg.clips.spec
        check_train(cfg, world_size=1)
    except ConfigError as e:
        shown = [str(p) for p in path]
        key = e.key.split(".")
        assert e.key and e.key not in ("(top level)",), e
        # the key is the changed setting, a parent of it, or (cross-checks) a sibling in its section
        assert key[0] == shown[0], f"changed {'.'.join(shown)}, error names {e.key}: {e}"


@SETTINGS
@given(path=st.sampled_from(PATHS), value=junk)
def test_any_junk_value_is_accepted_or_names_its_key(path, value):
    _check(_replace(SHIPPED, path, value), path)


@SETTINGS
@given(path=st.sampled_from([p for p in PATHS if len(p) >= 2]), key=st.text(min_size=1, max_size=8), value=junk)
def test_any_unknown_key_names_itself(path, key, value):
    data = _replace(SHIPPED, path[:-1], {**_at(SHIPPED, path[:-1]), key: value}) \
        if isinstance(_at(SHIPPED, path[:-1]), dict) else SHIPPED
    _check(data, path[:-1] + (key,))


def _at(data, path):
    for p in path:
        data = data[p]
    return data


@pytest.mark.parametrize("data, key", [
    ({"clips": {"width": 161}}, "clips.width"),  # x264 needs even sizes
    ({"clips": {"height": 91}}, "clips.height"),
    ({"clips": {"seconds": 0.01}}, "clips.seconds"),  # no frame in a clip
    ({"clips": {"width": 100000, "height": 100000}}, "clips"),
    ({"clips": {"keyframe_interval": 1000}}, "clips.keyframe_interval"),
    ({"shards": {"target_mb": math.inf}}, "shards.target_mb"),
    ({"shards": {"target_mb": math.nan}}, "shards.target_mb"),
    ({"download": {"timeout_s": 1e300}}, "download.timeout_s"),
    ({"runner": {"name": "Dataflw"}}, "runner.name"),
    ({"runner": {"options": ["--retry-faild"]}}, "runner.options"),
    ({"train": {"lr": math.inf}}, "train.lr"),
])
def test_values_that_validated_but_failed_later_are_refused(data, key):
    with pytest.raises(ConfigError) as e:
        parse_config({**SHIPPED, **{k: {**SHIPPED[k], **v} for k, v in data.items()}})
    assert e.value.key.startswith(key), e.value


@SETTINGS
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
                      st.sampled_from(["clips: [", "\t- x", "a: &a [*a]", "!!python/object:os.system {}", "[]", "3",
                                       "clips: {fps: 1e999}", "sources: {type: urls}"])))
def test_any_file_content_loads_or_is_a_config_error(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        load_config(path)
    except ConfigError as e:
        assert str(e)


@pytest.mark.parametrize("yaml_text, key", [
    ("sources: [{type: urls, name: u, urls: [http://a/b.mp4]}]\nclips: {width: 161}\n", "clips.width"),
    ("sources: [{type: urls, name: u, urls: [http://a/b.mp4]}]\nshards: {target_mb: .inf}\n", "shards.target_mb"),
    ("sources: [{type: urls, name: u, urls: [http://a/b.mp4]}]\nrunner: {name: Dataflw}\n", "runner.name"),
    ("sources: [{type: urls, name: u, urls: [http://a/b.mp4]}]\nclips: {seconds: 0.01}\n", "clips.seconds"),
    ("sources: [{type: nope, name: u}]\n", "sources.0"),
    ("sources: [{type: urls, name: u, urls: [http://a/b.mp4]}]\ndownload: 3\n", "download"),
])
def test_the_cli_exits_2_naming_the_key(tmp_path, yaml_text, key):
    import subprocess
    import sys

    cfg = tmp_path / "p.yaml"
    cfg.write_text(yaml_text)
    p = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(cfg), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"config error: {key}" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- catalog readers
row_value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30),
                      st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2))
rows = st.lists(st.one_of(
    st.dictionaries(st.sampled_from(["id", "url", "path", "title", "description", "duration", "x"]), row_value, max_size=6),
    row_value), max_size=6)


@SETTINGS
@given(rows=rows, garbage=st.binary(max_size=40))
def test_catalog_rows_of_any_shape_become_candidates_or_failures(tmp_path_factory, rows, garbage):
    d = tmp_path_factory.mktemp("cat")
    jsonl = d / "c.jsonl"
    jsonl.write_bytes("\n".join(json.dumps(r) for r in rows).encode() + b"\n" + garbage)
    csv = d / "c.csv"
    csv.write_bytes(b"id,url,title\n" + garbage + b"\n1,http://a/b.mp4,ok\n")
    for path in (jsonl, csv):
        items = list(discover(parse_config({"sources": [{"type": "catalog", "name": "c", "path": str(path)}]}).sources[0]))
        assert all(isinstance(i, (Candidate, Failure)) for i in items)
        for i in items:  # every one can be written to a table
            (i.row())
            json.dumps(i.row(), ensure_ascii=False).encode("utf-8")
