"""What every command shares: one exit-status table (a missing path is bad input, 2, for
every subcommand), --version, distinct default ports, config files that name the bad key
(unknown keys with a suggestion, duplicate keys), paths relative to the config file, a
glob that matches nothing refused before any work, and an ingest graph Beam builds without
its "yield and return" warning."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import yaml

from genie_pipeline.cli import build_parser, main
from genie_pipeline.config import load_config
from tests.conftest import ROOT


def _missing_path_cases(tmp) -> dict[str, list[str]]:
    nope = str(tmp / "nope")
    return {
        "ingest": ["ingest", "-c", nope + ".yaml"],
        "run": ["run", "-c", nope + ".yaml"],
        "report": ["report", nope],
        "snapshots": ["snapshots", nope],
        "gc": ["gc", nope, "--keep", "1"],
        "verify": ["verify", nope],
        "sample-corpus": ["sample-corpus", "--out", "/proc/nope/corpus"],
        "serve-corpus": ["serve-corpus", nope, "--port", "0"],
        "label": ["label", nope, "--port", "0"],
        "train-quality": ["train-quality", nope],
        "pretrain-quality": ["pretrain-quality", nope, "--out", str(tmp / "w.pt")],
        "refilter": ["refilter", nope],
        "train": ["train", nope],
        "play": ["play", "--checkpoint", nope, "--prompt", nope + ".png"],
        "export": ["export", "--checkpoint", nope, "--out", str(tmp / "b.pt")],
        "eval": ["eval", "--checkpoint", nope],
        "plan": ["plan", "--results", nope],
    }


def test_every_subcommand_exits_2_naming_a_missing_path(tmp_path, capsys):
    cases = _missing_path_cases(tmp_path)
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    # a new subcommand joins this table; `watch` waits for an output that is not there yet (a
    # detached job creates it), so a missing path is no error for it
    assert set(cases) == subcommands - {"watch"}
    for name, argv in cases.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert "nope" in err and "Traceback" not in err, (name, err)


def test_version():
    r = subprocess.run([sys.executable, "-m", "genie_pipeline.cli", "--version"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.strip() == "genie-pipeline 0.1.0"


def test_servers_have_distinct_default_ports():
    ap = build_parser()
    sub = ap._subparsers._group_actions[0].choices
    ports = {name: next(a.default for a in sub[name]._actions if a.dest == "port")
             for name in ("serve-corpus", "label", "play")}
    assert len(set(ports.values())) == 3, ports


@pytest.mark.parametrize("text, message", [
    ("sources:\n  - {type: files, name: a, globb: '*.mp4'}\n", "sources.0.globb: unknown key; did you mean 'glob'?"),
    ("train:\n  batchsize: 3\n", "train.batchsize: unknown key; did you mean 'batch_size'?"),
    ("clips:\n  fps: 10\n  fps: 12\n", "fps: duplicate key (lines 2 and 3)"),
])
def test_config_errors_name_the_key(tmp_path, capsys, text, message):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(text)
    assert main(["train", "-c", str(cfg), str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_relative_paths_in_a_config_are_relative_to_it(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    cfg = tmp_path / "conf" / "p.yaml"
    cfg.write_text(yaml.safe_dump({"sources": [{"type": "files", "name": "a", "glob": "videos/*.mp4"}],
                                   "output": {"dir": "out"}, "train": {"data": ["out", "gs://b/x"]}}))
    monkeypatch.chdir("/")
    c = load_config(str(cfg), sets=["train.out_dir=runs/x"])
    assert c.output.dir == str(tmp_path / "conf" / "out")
    assert c.sources[0].glob == str(tmp_path / "conf" / "videos" / "*.mp4")
    assert c.train.data == [str(tmp_path / "conf" / "out"), "gs://b/x"]
    assert c.train.out_dir == "runs/x"  # --set: relative to where the command runs


def test_a_glob_that_matches_nothing_exits_2_unless_allowed(tmp_path, capsys):
    cfg = tmp_path / "p.yaml"
    src = {"type": "files", "name": "a", "glob": "nothing-here/*.mp4"}
    cfg.write_text(yaml.safe_dump({"sources": [src], "output": {"dir": "out"}}))
    assert main(["ingest", "-c", str(cfg)]) == 2
    assert "sources.0.glob" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_the_ingest_graph_builds_without_beams_yield_and_return_warning(tmp_path, caplog):
    from genie_pipeline.ingest.pipeline import prepare_job

    (tmp_path / "v.mp4").write_bytes(b"")
    cfg = load_config(None, sets=[f"sources=[{{type: files, name: a, glob: '{tmp_path}/*.mp4'}}]"],
                      output_dir=str(tmp_path / "out"))
    with caplog.at_level(logging.WARNING):
        prepare_job(cfg, str(tmp_path / "out"))
    assert not [r for r in caplog.records if "yield and return" in r.getMessage()]


def test_small_data_is_named(tmp_path):
    from genie_pipeline.cli import small_label_set
    from genie_pipeline.ingest.pipeline import summary_table
    from genie_pipeline.shards.config import ClipsConfig
    from genie_pipeline.shards.reader import DataError, resolve_inputs
    from tests.fixtures.output import write_sprite_output

    assert "18 labelled clips (9 good, 9 bad)" in small_label_set({f"k{i}": "good" if i % 2 else "bad"
                                                                 for i in range(18)})
    assert small_label_set({f"k{i}": "good" if i % 2 else "bad" for i in range(200)}) is None
    assert "no validation clips" in summary_table({"clips_kept": 5, "clips_val": 0, "videos_done": 3})
    assert "no validation clips" not in summary_table({"clips_kept": 5, "clips_val": 1, "videos_done": 3})
    write_sprite_output(tmp_path, n_train_shards=1, clips_per_shard=2, n_val_shards=0, seed=1,
                        clips=ClipsConfig(width=64, height=48, seconds=3.2))
    with pytest.raises(DataError, match="--set shards.val_fraction=0.3"):
        resolve_inputs([str(tmp_path)], "val")
