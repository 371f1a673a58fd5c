"""Write constraints.txt, the lock every install uses, from a fresh resolve of pyproject.toml.

    python tools/lock.py [--beam 2.79.0]        (make lock [BEAM=2.79.0])

The lock is the one place that says which versions the launcher, the Dataflow workers and
the image share (apache-beam, the Python minor, torch/torchvision, pyarrow, numpy, yt-dlp)
and every other package a fresh clone installs: `make setup`, dataflow/Dockerfile and the
README's launch commands all install with `-c constraints.txt`, so the registry serving a
newer release changes nothing until this is run again.

It builds a throwaway venv with this interpreter, installs what `make setup` installs there
with no lock (torch and torchvision at pyproject's exact pins, the project with its dev
extra and `--beam` if given, the simulators installed without their pins), freezes it, and
sets dataflow/Dockerfile's BEAM_VERSION and PYTHON_VERSION build arguments to the result so
the image builds on Beam's SDK image for exactly those. `make test` then proves parity
(tests/test_container.py: lock = installed = image).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
DOCKERFILE = ROOT / "dataflow" / "Dockerfile"
# installed by `make setup` with --no-deps (procgen-mirror pins numpy<2 but runs beside numpy 2)
NO_DEPS = ("procgen-mirror", "gym3", "gym", "imageio")

HEADER = """\
# genie-pipeline's lock: the versions that `make setup`, dataflow/Dockerfile and the README's
# launch commands install (`pip install -c constraints.txt ...`). The launcher, the Dataflow
# workers and the image must share apache-beam and the Python minor below; the launcher
# refuses a --sdk_container_image tagged with others (exit 2).
# Written by tools/lock.py from a fresh resolve of pyproject.toml; do not edit by hand:
#   make lock              re-resolve everything at the newest releases
#   make lock BEAM=X.Y.Z   the same, on Beam X.Y.Z (also moves dataflow/Dockerfile's base image)
# then `make test` (tests/test_container.py checks lock = this venv = the image's base).
# python: {python}
"""


def pins(text: str) -> dict[str, str]:
    """{normalised name: version} of a lock's (or `pip freeze`'s) `name==version` lines."""
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if m:
            out[normalise(m[1])] = m[2]
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_python(text: str) -> str | None:
    """The Python minor a lock was resolved on (its `# python: X.Y` line)."""
    m = re.search(r"^# python: (\d+\.\d+)\s*$", text, re.M)
    return m[1] if m else None


def set_build_args(dockerfile: str, beam: str, python: str) -> str:
    """The Dockerfile with its BEAM_VERSION and PYTHON_VERSION defaults set."""
    for arg, value in (("BEAM_VERSION", beam), ("PYTHON_VERSION", python)):
        dockerfile, n = re.subn(rf"^ARG {arg}=\S*$", f"ARG {arg}={value}", dockerfile, flags=re.M)
        if n != 1:
            raise SystemExit(f"dataflow/Dockerfile: expected one `ARG {arg}=` line, found {n}")
    return dockerfile


def resolve(beam: str | None) -> str:
    """`pip freeze` of a fresh venv holding what `make setup` installs, with no lock."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = [d for d in deps if re.match(r"torch(vision)?==", d)]
    with tempfile.TemporaryDirectory(prefix="genie-lock-") as tmp:
        py = f"{tmp}/bin/python"
        steps = [[sys.executable, "-m", "venv", tmp],
                 [py, "-m", "pip", "install", "-q", "--upgrade", "pip"],
                 [py, "-m", "pip", "install", "-q", *torch],
                 [py, "-m", "pip", "install", "-q", f"{ROOT}[dev]", *([f"apache-beam=={beam}"] if beam else [])],
                 [py, "-m", "pip", "install", "-q", "--no-deps", *NO_DEPS]]
        for cmd in steps:
            subprocess.run(cmd, check=True)
        frozen = subprocess.run([py, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                                capture_output=True, text=True).stdout
    return "\n".join(sorted((line for line in frozen.splitlines()
                             if "==" in line and normalise(line.split("==")[0]) != "genie-pipeline"),
                            key=str.lower)) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--beam", help="the apache-beam release to lock (default: the newest pyproject allows)")
    args = ap.parse_args(argv)
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    frozen = resolve(args.beam)
    beam = pins(frozen).get("apache-beam")
    if not beam:
        raise SystemExit("the resolve holds no apache-beam")
    LOCK.write_text(HEADER.format(python=python) + frozen)
    DOCKERFILE.write_text(set_build_args(DOCKERFILE.read_text(), beam, python))
    print(f"constraints.txt: {len(pins(frozen))} packages, apache-beam {beam}, Python {python}; "
          f"dataflow/Dockerfile builds on apache/beam_python{python}_sdk:{beam}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
