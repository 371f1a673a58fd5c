import subprocess
import sys

import pytest

from genie_pipeline.config import ConfigError, load_config, parse_config
from tests.conftest import ROOT

OK = {"sources": [{"type": "search", "name": "gc", "queries": ["pitfall"]}]}


def test_shipped_pipeline_yaml_loads_with_documented_defaults():
    cfg = load_config(ROOT / "pipeline.yaml")
    assert cfg.clips.frames == 160 and (cfg.clips.width, cfg.clips.height, cfg.clips.fps) == (160, 90, 10)
    assert cfg.runner.name == "FnApiRunner"
    # every section of the schema appears in the shipped file, so every default is documented
    import yaml

    shipped = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    assert set(type(cfg).model_fields) <= set(shipped)
    sections = {"keywords": cfg.keywords, "download": cfg.download, "clips": cfg.clips, "shards": cfg.shards,
                "runner": cfg.runner, "output": cfg.output, "train": cfg.train,
                "filters.heuristics": cfg.filters.heuristics, "filters.quality": cfg.filters.quality}
    for dotted, model in sections.items():
        node = shipped
        for part in dotted.split("."):
            node = node[part]
        assert set(node) == set(type(model).model_fields), f"{dotted}: documented keys differ from the schema"
        # and the documented value is the default (the file is the reference)
        fresh = type(model)()
        for k in node:
            assert node[k] == getattr(fresh, k) or isinstance(getattr(fresh, k), (dict, list)), (dotted, k)


@pytest.mark.parametrize("patch, key", [
    ({"clips": {"fps": 0}}, "clips.fps"),
    ({"clips": {"aspect": "zoom"}}, "clips.aspect"),
    ({"shards": {"val_fraction": 1.5}}, "shards.val_fraction"),
    ({"download": {"retrys": 3}}, "download.retrys"),
    ({"sources": [{"type": "search", "name": "gc"}]}, "sources.0.queries"),
    ({"sources": [{"type": "search", "name": "Bad Name", "queries": ["x"]}]}, "sources.0.name"),
    ({"sources": [{"type": "catalog", "name": "a", "path": "x.jsonl", "keywords": "nope"}]}, "sources.0.keywords"),
    ({"sources": [{"type": "urls", "name": "a"}]}, "sources.0"),
    ({"sources": [{"type": "files", "name": "a", "glob": "*"}, {"type": "files", "name": "a", "glob": "*"}]}, "sources.1.name"),
    ({"sources": []}, "sources"),
    ({"runner": {"running_mode": "fast"}}, "runner.running_mode"),
])
def test_bad_values_name_the_key(patch, key):
    with pytest.raises(ConfigError) as e:
        parse_config({**OK, **patch})
    assert e.value.key == key, str(e.value)


def test_cli_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("sources:\n  - {type: search, name: gc, queries: [a]}\nclips: {secnds: 16}\n")
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert "clips.secnds" in r.stderr and "unknown key" in r.stderr
    bad.write_text("sources: [\n")
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "ingest", "-c", str(bad)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "not valid YAML" in r.stderr


def test_output_override(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("sources:\n  - {type: search, name: gc, queries: [a]}\n")
    assert load_config(p, output_dir=str(tmp_path / "o")).output.dir == str(tmp_path / "o")


def test_train_sizes_that_dont_fit_exit_2_naming_the_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("sources:\n  - {type: search, name: gc, queries: [a]}\n"
                 "train: {model: tiny, overrides: {tokenizer.st.heads: 7}}\n")
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(p), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "tokenizer.st.heads" in r.stderr, r.stderr
