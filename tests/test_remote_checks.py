"""A remote runner (Dataflow) is refused before any work starts, exit 2 naming what is wrong,
when its options are missing or a path it needs is on the launcher's disk. Nothing here
contacts Google: every case stops at the check."""
from __future__ import annotations

import json
import sys

import apache_beam
import pytest

from genie_pipeline import cli
from genie_pipeline.config import parse_config
from genie_pipeline.ingest.config import PreflightError, check_remote_run

PY = f"{sys.version_info.major}.{sys.version_info.minor}"
IMAGE = f"us-central1-docker.pkg.dev/p/genie/genie-pipeline:0.1.0-beam{apache_beam.__version__}-py{PY}"
DATAFLOW = ["--runner", "DataflowRunner", "--project", "p", "--region", "us-central1",
            "--temp_location", "gs://bucket/tmp", "--sdk_container_image", IMAGE]
SOURCE = {"type": "search", "name": "gc", "queries": ["pitfall"]}


def drop(flag: str) -> list[str]:
    i = DATAFLOW.index(flag)
    return DATAFLOW[:i] + DATAFLOW[i + 2:]


def ingest(tmp_path, capsys, cfg: dict, flags: list[str]) -> tuple[int, str]:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps({"sources": [SOURCE], "output": {"dir": "gs://bucket/out"}, **cfg}))
    rc = cli.main(["ingest", "-c", str(path), *flags])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("flags, name", [
    (drop("--project"), "--project"),
    (drop("--region"), "--region"),
    (drop("--temp_location"), "--temp_location"),
    (drop("--temp_location") + ["--temp_location", "/tmp/beam"], "--temp_location"),
    (["--runner=Dataflow"] + drop("--runner")[:2], "--region"),  # the short name is Dataflow too
])
def test_dataflow_without_its_options_exits_2(tmp_path, capsys, flags, name):
    rc, err = ingest(tmp_path, capsys, {}, flags)
    assert rc == 2, err
    assert f"genie-pipeline: {name}:" in err and "Dataflow" in err, err


@pytest.mark.parametrize("cfg, name", [
    ({"output": {"dir": "out/ingest"}}, "output.dir"),
    ({"output": {"dir": "file:///data/out"}}, "output.dir"),
    ({"download": {"cookiefile": "cookies.txt"}}, "download.cookiefile"),
    ({"filters": {"quality": {"mode": "filter", "model": "quality/model.pt"}}}, "filters.quality.model"),
    ({"sources": [{"type": "catalog", "name": "cat", "path": "videos.jsonl"}]}, "sources.0.path"),
    ({"sources": [SOURCE, {"type": "rlds", "name": "rt1", "root": "/data/fractal20220817_data/0.1.0",
                           "control_hz": 3}]}, "sources.1.root"),
])
def test_local_paths_with_dataflow_exit_2_naming_the_setting(tmp_path, capsys, cfg, name):
    rc, err = ingest(tmp_path, capsys, cfg, DATAFLOW)
    assert rc == 2, err
    assert f"genie-pipeline: {name}:" in err and "DataflowRunner" in err, err


def test_runner_section_and_command_line_are_checked_together(tmp_path, capsys):
    rc, err = ingest(tmp_path, capsys, {"runner": {"name": "DataflowRunner", "options": ["--project=p"]}}, [])
    assert rc == 2 and "genie-pipeline: --region:" in err, err
    # options from runner.options and the command line add up, as for the run itself
    options = ["--project=p", "--temp_location=gs://bucket/tmp"]
    rc, err = ingest(tmp_path, capsys, {"runner": {"options": options}}, ["--runner", "DataflowRunner"])
    assert rc == 2 and "genie-pipeline: --region:" in err, err


def runner_cfg(**kw):
    return parse_config({"sources": [SOURCE], "runner": kw}).runner


def test_local_runners_take_local_paths():
    for name in ("FnApiRunner", "DirectRunner"):
        check_remote_run(runner_cfg(name=name), [], {"output.dir": "out", "download.cookiefile": "c.txt"})


def test_a_complete_dataflow_run_passes():
    check_remote_run(runner_cfg(), DATAFLOW, {"output.dir": "gs://b/out", "download.cookiefile": "gs://b/c.txt",
                                              "filters.quality.model": None})
    with pytest.raises(PreflightError) as e:
        check_remote_run(runner_cfg(), DATAFLOW, {"output.dir": "gs://b/out", "download.cookiefile": "c.txt"})
    assert e.value.key == "download.cookiefile"


def skewed(version: str) -> str:
    """`version` with its last number moved by one: another release of the same series."""
    head, _, last = version.rpartition(".")
    return f"{head}.{int(last.split('rc')[0].split('dev')[0] or 0) + 1}"


@pytest.mark.parametrize("image, named", [
    (f"r/genie:0.1.0-beam{skewed(apache_beam.__version__)}-py{PY}",
     f"Beam {skewed(apache_beam.__version__)} on Python {PY}, this launcher Beam {apache_beam.__version__}"),
    (f"r/genie:0.1.0-beam{apache_beam.__version__}-py{skewed(PY)}", f"on Python {skewed(PY)}, this launcher"),
    (f"apache/beam_python{PY}_sdk:{skewed(apache_beam.__version__)}", f"Beam {skewed(apache_beam.__version__)}"),
    ("r/genie:latest", "cannot tell which Beam and Python r/genie:latest holds"),
    ("r/genie@sha256:" + "0" * 64, "cannot tell which Beam and Python"),
])
def test_a_launcher_refuses_an_image_of_another_beam_or_python(tmp_path, capsys, image, named):
    """Before any work (nothing reaches Google): exit 2, one line naming both versions."""
    flags = drop("--sdk_container_image") + ["--sdk_container_image", image]
    rc, err = ingest(tmp_path, capsys, {}, flags)
    assert rc == 2, err
    line = err.strip()
    assert "\n" not in line and line.startswith("genie-pipeline: --sdk_container_image:") and named in line, err


def test_a_dataflow_run_needs_the_image():
    with pytest.raises(PreflightError) as e:
        check_remote_run(runner_cfg(), drop("--sdk_container_image"), {"output.dir": "gs://b/out"})
    assert e.value.key == "--sdk_container_image"


@pytest.mark.parametrize("image", [
    f"r/genie:0.1.0-beam{apache_beam.__version__}-py{PY}",
    f"r/genie:0.1.0-beam{apache_beam.__version__}-py{PY}-gpu",
    f"r/genie:0.1.0-beam{apache_beam.__version__}-py{PY}@sha256:" + "0" * 64,
    f"apache/beam_python{PY}_sdk:{apache_beam.__version__}",
])
def test_images_of_this_launchers_beam_and_python_pass(image):
    flags = drop("--sdk_container_image") + ["--sdk_container_image", image]
    check_remote_run(runner_cfg(), flags, {"output.dir": "gs://b/out"})


def test_cuda_scoring_on_dataflow_needs_a_gpu_per_worker(tmp_path, capsys):
    quality = {"filters": {"quality": {"mode": "filter", "model": "gs://b/q.pt", "device": "cuda"}}}
    rc, err = ingest(tmp_path, capsys, quality, DATAFLOW)
    assert rc == 2 and err.startswith("genie-pipeline: filters.quality.device:") and "worker_accelerator" in err, err
    gpu = ["--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    paths = {"output.dir": "gs://b/out"}
    check_remote_run(runner_cfg(), DATAFLOW + gpu, paths, "cuda")
    check_remote_run(runner_cfg(), DATAFLOW + ["--experiments=worker_accelerator=type:nvidia-l4;count:1"], paths, "cuda")
    check_remote_run(runner_cfg(), DATAFLOW, paths, "auto")  # auto scores on the CPU there
    check_remote_run(runner_cfg(), DATAFLOW, paths, None)  # no classifier
