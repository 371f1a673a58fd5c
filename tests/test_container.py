"""The Dataflow image (dataflow/Dockerfile) and its flex template (dataflow/metadata.json,
dataflow/launch.py).

No docker daemon runs here, so the image itself is never built in tests. Instead the fast
tests read the Dockerfile (base image = our Beam and Python, Beam's boot as entrypoint, the
torch pins = the project's) and drive the flex-template launcher into the real CLI parser;
the slow test runs the Dockerfile's own COPY and `RUN pip install` instructions, parsed from
the file so that it breaks when the Dockerfile drifts, in a fresh venv without system site
packages, and checks what a worker needs there.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

DOCKERFILE = ROOT / "dataflow" / "Dockerfile"
METADATA = ROOT / "dataflow" / "metadata.json"
BEAM_BOOT = ["/opt/apache/beam/boot"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) of each Dockerfile instruction, continuation lines joined and
    comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        pending += " " + stripped
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        keyword, _, args = pending.strip().partition(" ")
        out.append((keyword.upper(), " ".join(args.split())))
        pending = ""
    return out


def final_stage() -> list[tuple[str, str]]:
    """The instructions of the image that ships: from the last FROM on."""
    instrs = instructions(DOCKERFILE.read_text())
    last = max(i for i, (kw, _) in enumerate(instrs) if kw == "FROM")
    return instrs[last:]


def build_args(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(arg.partition("=")[::2] for kw, arg in stage if kw == "ARG")


def pip_installs(stage: list[tuple[str, str]]) -> list[str]:
    return [arg for kw, arg in stage if kw == "RUN" and arg.startswith("pip install")]


def load_launcher():
    spec = importlib.util.spec_from_file_location("genie_flex_launch", ROOT / "dataflow" / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------ static
# what launcher, workers and image must share (tools/lock.py): pinned in the lock, installed
# here at exactly those versions, and the image's base and build arguments the same
MUST_MATCH = ("apache-beam", "torch", "torchvision", "pyarrow", "numpy", "yt-dlp")


def lock_tool():
    spec = importlib.util.spec_from_file_location("genie_lock", ROOT / "tools" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def global_args() -> dict[str, str]:
    """The Dockerfile's ARG defaults before its first FROM (the ones FROM lines may use)."""
    instrs = instructions(DOCKERFILE.read_text())
    first = next(i for i, (kw, _) in enumerate(instrs) if kw == "FROM")
    return build_args(instrs[:first])


def test_the_lock_is_what_is_installed_and_what_the_image_builds_on():
    import apache_beam
    from importlib.metadata import PackageNotFoundError, version

    lock = lock_tool()
    text = (ROOT / "constraints.txt").read_text()
    pins, python = lock.pins(text), lock.lock_python(text)
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python == here, f"constraints.txt was resolved on Python {python}, this is {here}"
    for name in MUST_MATCH:
        assert version(name).split("+")[0] == pins[name], f"{name}: installed {version(name)}, locked {pins[name]}"
    for name, pinned in pins.items():  # the rest of the lock too, where installed
        try:
            installed = version(name)
        except PackageNotFoundError:
            continue
        assert installed.split("+")[0] == pinned, f"{name}: installed {installed}, locked {pinned} (make setup)"
    # the image: Beam's SDK image at the lock's Beam and Python, and Google's launcher for that Python
    args = global_args()
    assert (args["BEAM_VERSION"], args["PYTHON_VERSION"]) == (pins["apache-beam"], python) == \
        (apache_beam.__version__, here), "make lock moves the Dockerfile's defaults with the lock"
    stage = final_stage()
    base = stage[0][1].replace("${PYTHON_VERSION}", args["PYTHON_VERSION"]).replace("${BEAM_VERSION}",
                                                                                   args["BEAM_VERSION"])
    assert base == f"apache/beam_python{python}_sdk:{pins['apache-beam']}", stage[0]
    assert f"python{python.replace('.', '')}-template-launcher-base" in args["LAUNCHER_IMAGE"]
    entrypoints = [json.loads(arg) for kw, arg in stage if kw == "ENTRYPOINT"]
    assert entrypoints[-1:] == [BEAM_BOOT], "Dataflow starts workers through Beam's boot"
    # make dataflow-image passes the lock's versions and tags the image with them
    makefile = (ROOT / "Makefile").read_text()
    assert "--build-arg BEAM_VERSION=$(LOCK_BEAM) --build-arg PYTHON_VERSION=$(LOCK_PYTHON)" in makefile
    assert "-beam$(LOCK_BEAM)-py$(LOCK_PYTHON)" in makefile


def test_every_install_takes_the_lock():
    """make setup, the image's pip steps and the README's launcher install all use constraints.txt."""
    stage = final_stage()
    lock_copy = next(i for i, (kw, arg) in enumerate(stage) if kw == "COPY" and arg.startswith("constraints.txt "))
    for i, (kw, arg) in enumerate(stage):
        if kw == "RUN" and "pip install" in arg:
            assert "-c /opt/genie-pipeline/constraints.txt" in arg and i > lock_copy, arg
    makefile = (ROOT / "Makefile").read_text()
    setup = makefile[makefile.index("$(STAMP): pyproject.toml $(LOCK)"):makefile.index("setup: $(STAMP)")]
    installs = [line for line in setup.splitlines() if "pip install" in line]
    assert len(installs) >= 4 and all("-c $(LOCK)" in line for line in installs), installs
    assert "STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK)" in makefile, "a new lock reinstalls"
    readme = (ROOT / "README.md").read_text()
    launches = [line for line in readme.splitlines() if re.match(r"\s*pip install .*\[dataflow\]", line)]
    assert launches and all("-c constraints.txt" in line for line in launches), launches


def test_lock_tool_moves_the_dockerfile_with_the_lock():
    lock = lock_tool()
    moved = lock.set_build_args(DOCKERFILE.read_text(), "2.99.1", "3.12")
    assert "ARG BEAM_VERSION=2.99.1" in moved and "ARG PYTHON_VERSION=3.12" in moved
    assert lock.set_build_args(moved, "2.99.1", "3.12") == moved
    assert lock.pins("# python: 3.12\nApache_Beam==2.99.1\nfoo.bar==1\n-e x\n") == {"apache-beam": "2.99.1",
                                                                                      "foo-bar": "1"}
    with pytest.raises(SystemExit):
        lock.set_build_args("FROM x\n", "2.99.1", "3.12")


def test_torch_is_installed_first_from_the_variant_index_at_the_projects_pins():
    stage = final_stage()
    assert build_args(stage)["TORCH_VARIANT"] == "cpu", "the default image is the CPU one"
    installs = pip_installs(stage)
    torch_line = next(i for i in installs if " torch==" in i)
    pins = lock_tool().pins((ROOT / "constraints.txt").read_text())
    assert f"torch=={pins['torch']}" in torch_line and f"torchvision=={pins['torchvision']}" in torch_line
    assert "--index-url https://download.pytorch.org/whl/${TORCH_VARIANT}" in torch_line
    project = next(i for i in installs if "[dataflow]" in i)
    assert installs.index(torch_line) < installs.index(project), \
        "torch must be in place before the project, or pip resolves its pin to the CUDA build"
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for name in ("torch", "torchvision"):
        pin = next(d for d in deps if re.match(rf"{name}\b", d))
        assert pin in torch_line.split(), f"{pin} (pyproject) not in {torch_line!r}"
    assert "--no-build-isolation" in project and "pip check" in project


def test_flex_template_runs_the_launcher_the_image_holds():
    stage = final_stage()
    env = dict(arg.partition("=")[::2] for kw, arg in stage if kw == "ENV")
    copied = {arg.split()[-1]: arg.split()[0] for kw, arg in stage if kw == "COPY" and not arg.startswith("--")}
    assert copied[env["FLEX_TEMPLATE_PYTHON_PY_FILE"]] == "dataflow/launch.py"
    assert "/opt/google/dataflow/python_template_launcher" in " ".join(arg for kw, arg in stage if kw == "COPY")


def test_metadata_parameters_become_flags_the_cli_accepts(tmp_path):
    from genie_pipeline.cli import build_parser
    from genie_pipeline.config import load_config
    from genie_pipeline.ingest.config import unknown_beam_flags

    meta = json.loads(METADATA.read_text())
    launch = load_launcher()
    assert [p["name"] for p in meta["parameters"]] == list(launch.PARAMETERS)
    for p in meta["parameters"]:
        assert p["label"] and p["helpText"]
        for rx in p.get("regexes", []):
            re.compile(rx)
    config = next(p for p in meta["parameters"] if p["name"] == "config")
    assert re.fullmatch(config["regexes"][0], "gs://b/genie/pipeline.yaml")
    assert not re.fullmatch(config["regexes"][0], "/home/me/pipeline.yaml")

    # what Dataflow's launcher passes: the parameters, then the job's pipeline options
    argv = launch.ingest_argv([f"--config={ROOT / 'pipeline.yaml'}",
                               "--set=sources.0.limit=5; download.allowed_networks=[127.0.0.0/8, 10.0.0.0/8]",
                               "--output=gs://b/genie/out", "--retry_failed=true", "--project=p",
                               "--region=us-central1", "--temp_location=gs://b/tmp", "--job_name=genie-1"],
                              str(tmp_path), image="us-docker.pkg.dev/p/r/genie:1")
    args, rest = build_parser().parse_known_args(argv)
    assert (args.command, args.config, args.output, args.retry_failed) == \
        ("ingest", str(ROOT / "pipeline.yaml"), "gs://b/genie/out", True)
    assert args.set == ["sources.0.limit=5", "download.allowed_networks=[127.0.0.0/8, 10.0.0.0/8]"]
    assert unknown_beam_flags(rest) == []
    assert rest[-3:] == ["--runner=DataflowRunner", "--sdk_location=container",
                         "--sdk_container_image=us-docker.pkg.dev/p/r/genie:1"]
    cfg = load_config(args.config, sets=args.set, output_dir=args.output)
    assert cfg.download.allowed_networks == ["127.0.0.0/8", "10.0.0.0/8"] and cfg.output.dir == "gs://b/genie/out"

    # options the user gave win over the launcher's defaults
    argv = launch.ingest_argv([f"--config={ROOT / 'pipeline.yaml'}", "--runner=TestDataflowRunner",
                               "--sdk_container_image=other:2"], str(tmp_path), image="img:1")
    assert [a for a in argv if a.startswith(("--runner", "--sdk_"))] == \
        ["--runner=TestDataflowRunner", "--sdk_container_image=other:2", "--sdk_location=container"]


@pytest.mark.parametrize("argv, named", [
    (["--project=p"], "config: required"),
    (["--config=pipeline.yaml", "--retry_failed=yes"], "retry_failed: 'yes'"),
])
def test_launcher_names_a_bad_parameter_and_exits_2(argv, named, capsys):
    assert load_launcher().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err


# -------------------------------------------------------------------------------- slow
def _run(cmd: str | list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def _apply(stage: list[tuple[str, str]], image_root: Path, env: dict) -> None:
    """The stage's COPY (from the build context, the repository root) and `RUN pip install`
    instructions, with `/opt/` standing for IMAGE_ROOT/opt/. apt-get and the launcher binary
    copied from Google's image are the image's business, not pip's."""
    for kw, arg in stage:
        if kw == "COPY" and not arg.startswith("--"):
            *sources, dest = arg.split()
            target = image_root / dest.lstrip("/")
            for src in sources:
                to = target / Path(src).name if dest.endswith("/") else target
                to.parent.mkdir(parents=True, exist_ok=True)
                if (ROOT / src).is_dir():
                    shutil.copytree(ROOT / src, to, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
                else:
                    shutil.copy2(ROOT / src, to)
        elif kw == "RUN" and arg.startswith("pip install"):
            # PyTorch's index is unreachable here. This machine's pip config serves
            # torch==2.14.1 and torchvision==0.29.1 (and the packages they pin) from local disk,
            # so the same pins install from there: nothing multi-GB is downloaded
            cmd = re.sub(r"--index-url \S+", "", arg)
            _run(re.sub(r"(?<![\w.:/])/opt/", f"{image_root}/opt/", cmd), env, image_root)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_dockerfile_install_steps_give_a_working_worker_in_a_plain_venv(tmp_path):
    import apache_beam

    started = time.monotonic()
    stage = final_stage()
    image_root, venv = tmp_path / "image", tmp_path / "venv"
    image_root.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # no system site packages
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # `pip` is the venv's pip
    try:
        _apply(stage, image_root, env)
        py = str(venv / "bin" / "python")
        # the CLI a flex-template launcher runs
        assert "ingest" in _run([str(venv / "bin" / "genie-pipeline"), "--help"], env, image_root).stdout
        # what a worker imports, from the venv and not from this checkout
        probe = ("import apache_beam, torch, yt_dlp, av, genie_pipeline.ingest.pipeline as p; "
                 "print(apache_beam.__version__, torch.__version__, p.__file__)")
        beam, torch_version, where = _run([py, "-c", probe], env, image_root).stdout.split()
        assert beam == apache_beam.__version__ and torch_version.startswith("2.14.1")
        assert where.startswith(str(venv)), where
        # yt-dlp's YouTube support: its default JavaScript runtime (deno) found and new enough,
        # and the challenge-solver scripts installed rather than fetched at run time
        js = ("from yt_dlp import YoutubeDL; from yt_dlp.dependencies import yt_dlp_ejs; "
              "info = YoutubeDL({'quiet': True})._js_runtimes['deno'].info; "
              "print(bool(yt_dlp_ejs), info.supported, info.version)")
        has_ejs, supported, version = _run([py, "-c", js], env, image_root).stdout.split()
        assert (has_ejs, supported) == ("True", "True"), version
        # the flex-template entry point runs in that environment and names a bad parameter
        launch = image_root / "opt/genie-pipeline/dataflow/launch.py"
        r = subprocess.run([py, str(launch), "--retry_failed=maybe", "--config=x.yaml"], env=env,
                           cwd=image_root, capture_output=True, text=True)
        assert r.returncode == 2 and "retry_failed" in r.stderr, r.stderr
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # several GB: do not leave it to pytest's retention
        print(f"\ncontainer install steps in a venv: {time.monotonic() - started:.0f} s")
