"""The `sources`, `download` and `runner` sections of pipeline.yaml."""
from __future__ import annotations

import ipaddress
import re
import sys
from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from genie_pipeline.shards.config import Section

SOURCE_NAME_RE = re.compile(r"^[a-z0-9]{1,16}$")


# ------------------------------------------------------------------------------ sources
class SourceBase(Section):
    name: str = Field(description="short id used in clip keys: [a-z0-9]{1,16}")
    # "default" = the top-level keywords; "none" = keep everything; other = keywords.sets[NAME]
    keywords: str = "default"
    limit: int | None = Field(default=None, ge=1)

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not SOURCE_NAME_RE.match(v):
            raise ValueError("must match [a-z0-9]{1,16} (it becomes part of clip keys)")
        return v


class SearchSource(SourceBase):
    type: Literal["search"]
    queries: list[str] = Field(min_length=1)
    prefix: str = "ytsearch"
    max_results: int = Field(default=50, ge=1)
    # passed to yt-dlp as `extractor_args`, e.g. {"geniecorpus": {"server": ["http://…"]}}
    extractor_args: dict[str, dict[str, list[str]]] = Field(default_factory=dict)


class CatalogFields(Section):
    video_id: str = "id"
    url: str = "url"
    path: str = "path"
    title: str = "title"
    description: str = "description"
    duration: str = "duration"
    channel: str = "channel"
    uploader: str = "uploader"
    upload_date: str = "upload_date"
    license: str = "license"
    actions: str = "actions"  # a true-actions sidecar (see ingest/actions.py)


class CatalogSource(SourceBase):
    type: Literal["catalog"]
    path: str
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    fields: CatalogFields = Field(default_factory=CatalogFields)


class UrlsSource(SourceBase):
    type: Literal["urls"]
    keywords: str = "none"  # a bare URL has no title to match before it is downloaded
    urls: list[str] = Field(default_factory=list)
    path: str | None = None  # a text file, one URL a line

    @model_validator(mode="after")
    def _some(self):
        if not self.urls and not self.path:
            raise ValueError("give `urls` or `path`")
        return self


class FilesSource(SourceBase):
    type: Literal["files"]
    glob: str  # local glob or any Beam FileSystem pattern (gs://bucket/videos/*.mp4)
    allow_empty: bool = False  # a glob matching no file is an error (exit 2) unless this is set


class LeRobotSource(SourceBase):
    type: Literal["lerobot"]
    root: str
    keywords: str = "none"
    cameras: list[str] = Field(default_factory=list)  # empty: every video key in info.json


class RldsSource(SourceBase):
    """An RLDS dataset as TFDS writes it (Open X-Embodiment: RT-1 is fractal20220817_data/0.1.0):
    every episode of `split` is a video; actions ignored (ingest/rlds.py)."""

    type: Literal["rlds"]
    root: str = Field(description="the DATASET/VERSION folder: dataset_info.json and NAME-SPLIT.tfrecord-NNNNN-of-MMMMM")
    keywords: str = "none"
    split: str = Field(default="train", pattern=r"^[A-Za-z0-9_]{1,32}$")
    image_key: str = Field(default="steps/observation/image", min_length=1,
                           description="the camera: a flattened feature of encoded JPEG/PNG frames, one per step")
    # no default: datasets do not record it, and a wrong rate silently changes the speed of time
    control_hz: float = Field(gt=0, le=1000, description="steps per second (RT-1: 3); resampled to clips.fps")


Source = Annotated[
    Union[SearchSource, CatalogSource, UrlsSource, FilesSource, LeRobotSource, RldsSource],
    Field(discriminator="type"),
]


# ----------------------------------------------------------------------------- download
class DownloadConfig(Section):
    scratch_dir: str | None = None  # default: OUT/_scratch
    keep: bool = False
    # null: the cheapest format that serves the clip (`selected_format`); or any yt-dlp format
    format: str | None = None
    min_height: int = Field(default=144, ge=1, le=4320, description="the floor of the source height the default "
                                                                    "format takes (at least clips.height)")
    # cheapest decode first, as benchmarks/results/decode_codecs.json measures it at 144-360p
    codec_order: list[Literal["h264", "vp9", "av1"]] = Field(default_factory=lambda: ["h264", "vp9", "av1"],
                                                             min_length=1)
    max_filesize_mb: float = Field(default=500, gt=0)
    max_duration_s: float = Field(default=4 * 3600, gt=0)
    # width × height a source may claim before anything is decoded (8K UHD by default)
    max_pixels: int = Field(default=7680 * 4320, ge=1)
    retries: int = Field(default=4, ge=0, le=100)
    backoff_s: float = Field(default=1.0, ge=0, le=3600)
    backoff_max_s: float = Field(default=60.0, ge=0, le=86400)
    # sockets take at most a day; a larger value overflows the OS timer
    timeout_s: float = Field(default=30.0, gt=0, le=86400)
    # job-wide per-host limits: each worker process takes its share (ingest/politeness.py)
    per_host_concurrency: int = Field(default=2, ge=1, le=1024,
                                      description="downloads in flight per host, whole job; each process "
                                                  "takes ceil(share), at least 1")
    per_host_rate: float = Field(default=2.0, gt=0, description="downloads started per second per host, whole job")
    job_workers: int | None = Field(default=None, ge=1, le=1_000_000,
                                    description="worker processes the per-host limits are split among; "
                                                "default: from the runner options")
    cookiefile: str | None = Field(default=None, description="any fs path; each worker reads a private 0600 copy")
    proxy: str | None = None
    proxy_file: str | None = Field(default=None, description="any fs path whose content is the proxy URL")
    # egress identities (ingest/identity.py): a proxy pool, each proxy with its own cookie jar
    proxies: str | None = Field(default=None, description="any fs path: a file of proxy URLs, one a line")
    use_own_address: bool = Field(default=False, description="with a pool: the worker's own address too")
    identity_rate: float | None = Field(default=None, gt=0, description="download starts per second per "
                                                                         "(site, identity), whole job; null: no limit")
    identity_concurrency: int = Field(default=1024, ge=1, le=1024,
                                      description="downloads in flight per (site, identity), whole job")
    identity_attempts: int = Field(default=6, ge=1, le=100, description="identities a video tries in a run "
                                                                         "(walls, 429s, failing proxies)")
    identity_rest_s: float = Field(default=30.0, ge=0, le=86400, description="an identity's first rest at a "
                                                                              "site after a bot wall; doubles")
    identity_rest_max_s: float = Field(default=1800.0, ge=0, le=86400)
    proxy_max_failures: int = Field(default=3, ge=1, le=1000, description="failures in a row that retire a proxy")
    # proof-of-origin tokens for YouTube: the bgutil provider plugin (pip install
    # 'genie-pipeline[pot]'; in the Dataflow image) asks a token server beside the worker
    pot_provider: Literal["none", "bgutil_http", "bgutil_script"] = "none"
    pot_base_url: str = Field(default="http://127.0.0.1:4416", description="bgutil_http: the token server")
    pot_server_home: str | None = Field(default=None, description="bgutil_script: the provider's server folder")
    allowed_schemes: list[str] = Field(default_factory=lambda: ["http", "https"])
    ytdlp_options: dict[str, Any] = Field(default_factory=dict)
    # the download guard (ingest/netguard.py): where a download may connect, how long, how slow
    allow_private_networks: bool = False  # loopback, link-local (cloud metadata), private, reserved
    allowed_networks: list[str] = Field(default_factory=list, description="CIDRs allowed although private")
    deadline_s: float = Field(default=3600.0, gt=0, description="per video, every attempt included")
    min_rate_bytes_s: float = Field(default=4096.0, ge=0, description="0: no minimum")
    rate_window_s: float = Field(default=30.0, gt=0, description="seconds of waiting the rate is averaged over")

    @model_validator(mode="after")
    def _one_proxy(self):
        if self.proxy and self.proxy_file:
            raise ValueError("download.proxy and download.proxy_file are both set: give one "
                             "(proxy_file keeps credentials out of pipeline.yaml)")
        if self.proxy and "@" in self.proxy:
            raise ValueError("download.proxy holds credentials: put the proxy URL in a file and name it in "
                             "download.proxy_file (or a pool in download.proxies)")
        return self

    def pot_extractor_args(self) -> dict[str, dict[str, list[str]]]:
        """yt-dlp `extractor_args` that configure the token provider plugin ({} for none)."""
        if self.pot_provider == "bgutil_http":
            return {"youtubepot-bgutilhttp": {"base_url": [self.pot_base_url]}}
        if self.pot_provider == "bgutil_script":
            return {"youtubepot-bgutilscript": {"server_home": [self.pot_server_home]}} if self.pot_server_home else {}
        return {}

    def selected_format(self, clip_height: int = 90) -> str:
        """The yt-dlp format: `format` if given, else `cheapest_format` for the clip height."""
        return self.format or cheapest_format(max(clip_height, self.min_height), self.codec_order)

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not a network (CIDR such as 10.0.0.0/8 or fd00::/8)") from None
        return v


# the vcodec strings sites give each codec (YouTube: avc1.4d400c, vp09.00.10.08 / vp9, av01.0.00M.08)
VCODEC = {"h264": "^(avc1|h264)", "vp9": "^(vp0?9)", "av1": "^(av01|av1)"}
# with formats sorted smallest first, yt-dlp's "best" of a selector is its smallest format
CHEAPEST_SORT = ["+res", "+size", "+br"]


def cheapest_format(height: int, codec_order: list[str]) -> str:
    """A yt-dlp format (to use with format_sort CHEAPEST_SORT) that takes, in this order: the
    smallest video-only stream at least `height` tall in each codec of `codec_order`, in any
    codec, a combined (audio + video) file at least that tall, and only then what is there:
    the tallest video-only stream (`wv`: the last in smallest-first order), the tallest
    combined file, video and audio merged. No audio is downloaded where the site offers
    video alone."""
    tall = f"[height>={height}]"
    picks = [f"bv{tall}[vcodec~='{VCODEC[c]}']" for c in codec_order]
    return "/".join([*picks, f"bv{tall}", f"b{tall}", "wv", "w", "bv*+ba"])


# ------------------------------------------------------------------------------- runner
class RunnerConfig(Section):
    name: str = "FnApiRunner"
    direct_num_workers: int = Field(default=2, ge=1, le=1024)
    running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "multi_processing"
    # any Beam pipeline options, e.g. ["--project=p", "--region=us-central1", "--temp_location=gs://b/tmp"]
    options: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _runner_known(cls, v: str) -> str:
        check_runner(v)
        return v

    @field_validator("options")
    @classmethod
    def _options_known(cls, v: list[str]) -> list[str]:
        bad = unknown_beam_flags(v)
        if bad:
            raise ValueError(f"not Beam pipeline options: {' '.join(bad)}")
        return v


# runners every config names, known to Beam (a test holds this to StandardOptions): validating
# one needs no Beam import, which costs 1.5-2 s, so a bad config anywhere else exits at once
COMMON_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "DataflowRunner", "PrismRunner"})


def check_runner(name: str) -> None:
    """ValueError unless `name` is a runner Beam knows (or a dotted path to a runner class)."""
    if "." in name or name in COMMON_RUNNERS:
        return
    from apache_beam.options.pipeline_options import StandardOptions

    known = StandardOptions.KNOWN_RUNNER_NAMES
    if name not in known and f"{name}Runner" not in known:
        raise ValueError(f"unknown Beam runner {name!r}; known: {', '.join(sorted(known))}")


def beam_flag_error(flags: list[str]) -> str | None:
    """What Beam's own parser says is wrong with `flags` (a bad value: --direct_num_workers=abc),
    as one line, or None. Beam would print its whole usage (150 lines) and exit."""
    import contextlib
    import io

    from apache_beam.options.pipeline_options import PipelineOptions

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            PipelineOptions(list(flags)).get_all_options(retain_unknown_options=True)
    except SystemExit:
        errors = [line.split("error:", 1)[1].strip() for line in said.getvalue().splitlines() if "error:" in line]
        return errors[-1] if errors else "a Beam pipeline option has a bad value"
    return None


def unknown_beam_flags(args: list[str]) -> list[str]:
    """The arguments no Beam pipeline option accepts (misspelt flags, stray words), in order.

    Beam itself only logs such arguments and drops them, so a typo such as `--retry-faild`
    would otherwise run a job the user did not ask for. A `--runner` value is checked too."""
    if not args:
        return []
    # Beam's own parser knows every option class's flags (value-provider ones included)
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    for option_class in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        option_class._add_argparse_args(parser)
    known, unknown = parser.parse_known_args(args)
    if known.runner:
        try:
            check_runner(known.runner)
        except ValueError as e:
            unknown.append(f"--runner {known.runner} ({e})")
    return unknown


# ------------------------------------------------------------------------ before a run
class PreflightError(ValueError):
    """A bad input found before any work starts (the CLI exits 2): `key` names the setting or
    flag it comes from, `message` what is wrong with it."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# runners whose workers are other machines: nothing on the launcher's disk reaches them
REMOTE_RUNNERS = frozenset({"DataflowRunner", "Dataflow", "TestDataflowRunner"})
# what a Dataflow job cannot start without (Beam would only fail once the job is submitted,
# or guess the region from the launcher's gcloud settings)
DATAFLOW_REQUIRED = ("project", "region", "temp_location")


def check_remote_run(runner: RunnerConfig, extra_args: list[str], paths: dict[str, str | None],
                     scoring_device: str | None = None) -> None:
    """PreflightError unless a run on a remote runner (Dataflow) can work: its required options
    are given (runner.options or the command line, which wins), the temp location is in Cloud
    Storage, none of `paths` (setting name -> path the workers read or write, None where
    unset) is on the launcher's disk, the image holds the launcher's Beam and Python, and
    `scoring_device` (filters.quality.device when the classifier runs) `cuda` comes with a
    GPU per worker. A local runner passes whatever its paths."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions

    from genie_pipeline.shards.fs import is_remote

    options = PipelineOptions(list(runner.options) + list(extra_args))
    name = options.view_as(StandardOptions).runner or runner.name
    if name.rsplit(".", 1)[-1] not in REMOTE_RUNNERS:
        return
    gcp = options.view_as(GoogleCloudOptions)
    for option in DATAFLOW_REQUIRED:
        if not getattr(gcp, option):
            raise PreflightError(f"--{option}", f"{name} needs --{option} (in runner.options or on the command line)")
    if not gcp.temp_location.startswith("gs://"):
        raise PreflightError("--temp_location", f"{gcp.temp_location!r} is not a gs:// path; {name} stages "
                                                f"files in Cloud Storage")
    for key, path in paths.items():
        if path and not is_remote(path):
            raise PreflightError(key, f"{path!r} is on this machine, which {name}'s workers cannot reach: "
                                      f"use a gs:// path")
    check_image(options, name)
    if scoring_device == "cuda" and not worker_accelerator(options):
        raise PreflightError("filters.quality.device", f"cuda, but the {name} workers get no GPU: add "
                                                       f"--dataflow_service_options \"worker_accelerator=type:"
                                                       f"nvidia-l4;count:1;install-nvidia-driver\" (or use auto)")


def worker_accelerator(options) -> str | None:
    """The `worker_accelerator=...` a Dataflow job asks for (a service option, or the older
    experiment of the same name), None where its workers get no GPU."""
    from apache_beam.options.pipeline_options import DebugOptions, GoogleCloudOptions

    given = list(options.view_as(GoogleCloudOptions).dataflow_service_options or [])
    given += list(options.view_as(DebugOptions).experiments or [])
    return next((o for o in given if o.startswith("worker_accelerator=")), None)


# an image's Beam release and Python minor, as its tag names them: ours as `make
# dataflow-image` tags it (…:0.1.0-beam2.78.0-py3.11), or Beam's own SDK image
_TAGGED = re.compile(r":[^/@]*?beam(\d+\.\d+\.\d+(?:rc\d+|\.dev\d+)?)-py(\d+\.\d+)(?![\d.])")
_BEAM_SDK = re.compile(r"(?:^|/)beam_python(\d+\.\d+)_sdk:(\d+\.\d+\.\d+(?:rc\d+|\.dev\d+)?)(?:@|$)")


def image_versions(image: str) -> tuple[str, str] | None:
    """(Beam release, Python minor) that the SDK container `image` holds, read from its tag;
    None where the tag does not say."""
    if m := _TAGGED.search(image):
        return m[1], m[2]
    if m := _BEAM_SDK.search(image):
        return m[2], m[1]
    return None


def check_image(options, runner_name: str) -> None:
    """PreflightError unless --sdk_container_image is given and holds this launcher's Beam and
    Python: Dataflow's workers reject every bundle of a job pickled by another release ("Pipeline
    construction environment and pipeline runtime environment are not compatible"), after the
    job has started and billed. Both versions come from constraints.txt, for launcher and image."""
    import apache_beam
    from apache_beam.options.pipeline_options import WorkerOptions

    image = options.view_as(WorkerOptions).sdk_container_image
    if not image:
        raise PreflightError("--sdk_container_image", f"{runner_name} needs the project's image (make "
                                                      f"dataflow-image): its workers install nothing at boot")
    ours = (apache_beam.__version__, f"{sys.version_info.major}.{sys.version_info.minor}")
    theirs = image_versions(image)
    if theirs is None:
        raise PreflightError("--sdk_container_image", f"cannot tell which Beam and Python {image} holds: tag it "
                                                      f"as make dataflow-image does (…-beam{ours[0]}-py{ours[1]})")
    if theirs != ours:
        raise PreflightError("--sdk_container_image",
                             f"{image} holds Beam {theirs[0]} on Python {theirs[1]}, this launcher Beam {ours[0]} "
                             f"on Python {ours[1]}: workers reject a job built by another release; launch from "
                             f"an install of the same constraints.txt (pip install -c constraints.txt -e "
                             f"'.[dataflow]') or build the image from this checkout")
