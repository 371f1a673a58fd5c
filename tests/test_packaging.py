"""The installed distribution claims one import name: `genie_pipeline`.

The wheel (pip) and the sdist (what Beam's `--setup_file ./setup.py` stages for Dataflow
workers) are built from this checkout and installed into a clean venv; imports run there
from another directory, with the project's dependencies on PYTHONPATH only (a PYTHONPATH
entry runs no .pth file, so this checkout's editable install is out of sight).
"""
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

CARD = ("shards", "filtering", "ingest", "training", "models")

PROBE = """
import importlib, importlib.resources, json, sys
import genie_pipeline, genie_pipeline.cli, genie_pipeline.shards.reader, genie_pipeline.ingest.pipeline
import genie_pipeline.training.loader, genie_pipeline.models.genie, genie_pipeline.filtering.quality
import yt_dlp_plugins.extractor.geniecorpus as plugin
out = {"genie_pipeline": genie_pipeline.__file__, "reader": genie_pipeline.shards.reader.__file__,
       "plugin": plugin.__file__, "plugin_classes": plugin.__all__, "bare": {}}
for name in %r:
    try:
        importlib.import_module(name)
        out["bare"][name] = "importable"
    except ModuleNotFoundError:
        out["bare"][name] = "missing"
page = importlib.resources.files("genie_pipeline.filtering.quality.label").joinpath("page.html")
out["page"] = page.is_file()
print(json.dumps(out))
""" % (CARD,)


def _install_and_probe(artifact: Path, tmp: Path) -> dict:
    import json

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q", "--no-deps",
                    "--no-index", "--no-build-isolation", str(artifact)], check=True, capture_output=True)
    deps = sysconfig.get_paths()["purelib"]
    r = subprocess.run([str(vpy), "-c", PROBE], capture_output=True, text=True, cwd=tmp,
                       env={"PYTHONPATH": deps, "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    site = str(venv)
    assert out["genie_pipeline"].startswith(site) and out["reader"].startswith(site), out
    assert out["reader"].endswith("genie_pipeline/shards/reader.py")
    assert out["plugin"].startswith(site) and out["plugin_classes"] == ["GenieCorpusSearchIE"]
    assert out["bare"] == {name: "missing" for name in CARD}, out["bare"]
    assert out["page"], "the labelling page's files are not installed"
    return out


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored): builds write
    their build/ and egg-info there, not into the checkout."""
    tree = tmp_path_factory.mktemp("src")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    for name in files:
        src = ROOT / name
        if src.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            (tree / name).write_bytes(src.read_bytes())
    return tree


@pytest.mark.slow
def test_wheel_installs_under_one_name(tmp_path, source_tree):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(source_tree)], check=True, capture_output=True)
    wheel = next(dist.glob("genie_pipeline-*.whl"))
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist()}
    assert not tops & set(CARD), f"the wheel installs top-level {sorted(tops & set(CARD))}"
    _install_and_probe(wheel, tmp_path)


@pytest.mark.slow
def test_sdist_for_dataflow_setup_file_installs_under_one_name(tmp_path, source_tree):
    """Beam stages `python setup.py sdist`; a worker's pip builds a wheel from it and installs that."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(dist)], cwd=source_tree, check=True,
                   capture_output=True)
    sdist = next(dist.glob("genie_pipeline-*.tar.gz"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "built"), str(sdist)], check=True, capture_output=True)
    _install_and_probe(next((tmp_path / "built").glob("genie_pipeline-*.whl")), tmp_path)
