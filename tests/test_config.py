import subprocess
import sys

import pytest

from genie_pipeline.config import ConfigError, PipelineConfig, load_config, parse_config
from tests.conftest import ROOT

OK = {"sources": [{"type": "search", "name": "gc", "queries": ["pitfall"]}]}


def test_shipped_pipeline_yaml_documents_every_default():
    """The shipped file is the reference: every section's keys and values equal the schema's
    defaults, lists and mappings included (only `sources` is an example of the user's own)."""
    import yaml

    cfg = load_config(ROOT / "pipeline.yaml")
    assert cfg.clips.frames == 160 and (cfg.clips.width, cfg.clips.height, cfg.clips.fps) == (160, 90, 10)
    shipped = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    assert set(shipped) == set(PipelineConfig.model_fields)
    defaults = PipelineConfig().model_dump(mode="json")
    for section in PipelineConfig.model_fields:
        if section == "sources":
            continue
        assert shipped[section] == defaults[section], _diff(section, shipped[section], defaults[section])


def _diff(path, shipped, default) -> str:
    if isinstance(shipped, dict) and isinstance(default, dict):
        for k in sorted(set(shipped) | set(default)):
            if shipped.get(k, "<missing>") != default.get(k, "<missing>"):
                return _diff(f"{path}.{k}", shipped.get(k, "<missing>"), default.get(k, "<missing>"))
    return f"{path}: pipeline.yaml says {shipped!r}, the schema's default is {default!r}"


def test_drift_check_sees_a_changed_list_value():
    """The comparison above would fail on a list that differs in one element."""
    import yaml

    shipped = yaml.safe_load((ROOT / "pipeline.yaml").read_text())
    shipped["keywords"]["exclude"] = shipped["keywords"]["exclude"][:-1] + ["zzz"]
    assert shipped["keywords"] != PipelineConfig().model_dump(mode="json")["keywords"]


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


def test_a_bad_config_exits_before_beam_or_torch_is_imported(tmp_path):
    """A typo costs the user the config's own check, not the 2-3 s of importing Beam and torch;
    the runners that skip Beam's list are in it."""
    from apache_beam.options.pipeline_options import StandardOptions

    from genie_pipeline.ingest.config import COMMON_RUNNERS

    assert COMMON_RUNNERS <= set(StandardOptions.KNOWN_RUNNER_NAMES)
    probe = ("import runpy, sys\nsys.argv = ['genie-pipeline', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('genie_pipeline.cli', run_name='__main__')\n"
             "except SystemExit as e:\n"
             "    print('rc', e.code, 'beam', 'apache_beam' in sys.modules, 'torch', 'torch' in sys.modules)\n")
    src = "sources: [{type: urls, name: u, urls: ['http://a/b.mp4']}]\n"
    for command, text, key in [("ingest", "clips: {width: 161}", "clips.width"),
                               ("train", "train: {model: tiny, overrides: {tokenizer.st.heads: 7}}",
                                "train.overrides.tokenizer.st.heads")]:
        bad = tmp_path / f"{command}.yaml"
        bad.write_text(src + text + "\n")
        args = [command, "-c", str(bad)] + ([str(tmp_path)] if command == "train" else [])
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, cwd=ROOT)
        assert key in r.stderr, r.stderr
        assert r.stdout.split() == ["rc", "2", "beam", "False", "torch", "False"], (command, r.stdout + r.stderr)


def test_output_override(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("sources:\n  - {type: search, name: gc, queries: [a]}\n")
    assert load_config(p, output_dir=str(tmp_path / "o")).output.dir == str(tmp_path / "o")
    assert load_config(p, ["output.dir=x"]).output.dir == "x"


def test_train_sizes_that_dont_fit_exit_2_naming_the_key(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("sources:\n  - {type: search, name: gc, queries: [a]}\n"
                 "train: {model: tiny, overrides: {tokenizer.st.heads: 7}}\n")
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "train", "-c", str(p), str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "tokenizer.st.heads" in r.stderr, r.stderr


@pytest.mark.parametrize("sets, key", [
    (["clips.fps=0"], "clips.fps"),
    (["clips.fsp=12"], "clips.fsp"),
    (["nope.x=1"], "nope.x"),
    (["clips"], "--set"),
    (["sources.3.limit=1"], "sources.3"),
    (["train.batch_size=[1"], "train.batch_size"),
])
def test_set_overrides_name_a_bad_key(sets, key):
    with pytest.raises(ConfigError) as e:
        parse_config(OK, sets)
    assert e.value.key == key, str(e.value)


def test_set_overrides_values_as_yaml():
    cfg = parse_config(OK, ["clips.fps=5", "filters.quality.mode=score_only", "sources.0.limit=3",
                            "train.overrides.tokenizer.patch=8", "keywords.exclude=[movie]"])
    assert cfg.clips.fps == 5 and cfg.filters.quality.mode == "score_only" and cfg.sources[0].limit == 3
    assert cfg.train.overrides == {"tokenizer": {"patch": 8}} and cfg.keywords.exclude == ["movie"]
    assert OK["sources"][0].get("limit") is None  # the caller's mapping is untouched


def test_commands_that_read_outputs_need_no_sources():
    assert parse_config({"train": {"batch_size": 2}}, require_sources=False).train.batch_size == 2
    assert load_config(None, ["clips.fps=5"], require_sources=False).clips.fps == 5
    with pytest.raises(ConfigError) as e:
        parse_config({"train": {"batch_size": 2}})
    assert e.value.key == "sources"


def test_cli_set_exits_2_naming_the_key(tmp_path):
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "verify", str(tmp_path), "--set", "clips.fsp=3"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "clips.fsp" in r.stderr and "unknown key" in r.stderr, r.stderr


def test_demo_overlay_merges_key_by_key():
    base = load_config(ROOT / "pipeline.yaml")
    demo = load_config(ROOT / "pipeline.yaml", ["train.batch_size=2"], overlay=ROOT / "genie_pipeline" / "demo.yaml")
    assert (demo.filters.quality.epochs, demo.train.model, demo.train.tokenizer_steps) == (6, "tiny", 80)
    assert demo.train.batch_size == 2  # --set comes after the overlay
    # what the overlay does not name stays as pipeline.yaml says
    assert demo.filters.quality.patience == base.filters.quality.patience and demo.sources == base.sources
    assert demo.train.lr == base.train.lr
