"""The flex template's entry point: `genie-pipeline ingest` with the template's parameters.

Dataflow's template launcher runs this file (FLEX_TEMPLATE_PYTHON_PY_FILE in
dataflow/Dockerfile) with the parameters of dataflow/metadata.json as `--name=value` flags,
mixed with the job's pipeline options (project, region, temp and staging locations, …).
They become `genie-pipeline ingest` flags:

    --config=gs://b/pipeline.yaml       -c, read from the bucket into a local file first
    --set=a.b=1;c.d=[x, y]              one --set per `;`-separated override
    --output=gs://b/out                 --output
    --retry_failed=true                 --retry-failed

Everything else goes to Beam as it came. Unless given, --runner=DataflowRunner,
--sdk_location=container and --sdk_container_image=<this image> are added, so that the
workers run this image and install nothing at boot. Exit status: the CLI's (2 for a bad
parameter, naming it).
"""
from __future__ import annotations

import os
import sys
import tempfile

PARAMETERS = ("config", "set", "output", "retry_failed")


class ParameterError(ValueError):
    """A template parameter that cannot become an ingest flag."""


def split_parameters(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """The template's parameters (`--name=value`, names in PARAMETERS) and the rest, in order."""
    ours, rest = {}, []
    for arg in argv:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if eq and name in PARAMETERS:
            ours[name] = value
        else:
            rest.append(arg)
    return ours, rest


def local_config(path: str, folder: str) -> str:
    """`path` itself if it is on this machine, else a copy of it in `folder` (the CLI reads
    its config from a local file; the launcher VM holds the config only in the bucket)."""
    from genie_pipeline.shards import fs

    if not fs.is_remote(path):
        return fs.local(path)
    copy = os.path.join(folder, os.path.basename(path.rstrip("/")) or "pipeline.yaml")
    with open(copy, "wb") as f:
        f.write(fs.read_bytes(path))
    return copy


def ingest_argv(argv: list[str], folder: str, image: str | None) -> list[str]:
    """`genie-pipeline ingest` arguments for the launcher's `argv` (ParameterError if a
    parameter is missing or malformed); a remote config is copied into `folder`."""
    params, beam = split_parameters(argv)
    if not params.get("config"):
        raise ParameterError("config: required (the pipeline.yaml in the bucket, e.g. gs://b/pipeline.yaml)")
    retry = params.get("retry_failed", "false").strip().lower()
    if retry not in ("true", "false"):
        raise ParameterError(f"retry_failed: {params['retry_failed']!r} is neither true nor false")
    out = ["ingest", "-c", local_config(params["config"], folder)]
    for override in filter(None, (s.strip() for s in params.get("set", "").split(";"))):
        out += ["--set", override]
    if params.get("output"):
        out += ["--output", params["output"]]
    if retry == "true":
        out.append("--retry-failed")
    # the launcher exits once the job is submitted: the job holds the output from its first step
    # (its own lease) and commits it itself
    out.append("--detach")
    defaults = {"runner": "DataflowRunner", "sdk_location": "container", "sdk_container_image": image}
    for name, value in defaults.items():
        if value and not any(a == f"--{name}" or a.startswith(f"--{name}=") for a in beam):
            beam.append(f"--{name}={value}")
    return out + beam


def main(argv: list[str] | None = None) -> int:
    from genie_pipeline.cli import main as cli_main

    with tempfile.TemporaryDirectory(prefix="genie-launch-") as folder:
        try:
            args = ingest_argv(sys.argv[1:] if argv is None else argv, folder,
                               os.environ.get("GENIE_SDK_CONTAINER_IMAGE") or None)
        except (ParameterError, OSError) as e:
            print(f"genie-pipeline flex template: {e}", file=sys.stderr)
            return 2
        return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
