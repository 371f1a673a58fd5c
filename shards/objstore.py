"""Object stores (`s3://`, `gs://`) beyond what Beam's FileSystems offers: the options every
process reads them with, a conditional create (for the output lease), and a probe that an
output location is writable before any work starts.

Configuration, one place for every process. Beam's filesystems read their endpoint and
credentials from pipeline options; a Beam worker gets the pipeline's, and any other process
(the CLI before its pipeline, training, DataLoader workers, `torchrun` ranks) gets defaults
here on first use. The defaults come from the environment, which every child process
inherits: for S3 `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_DEFAULT_REGION` or a profile (boto3's chain); for GCS Application Default Credentials
(`GOOGLE_APPLICATION_CREDENTIALS` or `gcloud auth application-default login`) and
`STORAGE_EMULATOR_HOST` for an emulator. `configure(beam_args)` sets flags such as
`--s3_endpoint_url` for this process (the CLI passes `runner.options`).
"""
from __future__ import annotations

import functools
import os
import uuid
from typing import Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, S3Options
from apache_beam.options.value_provider import RuntimeValueProvider

# seconds before a request to an object store that does not answer fails (a probe or a lease)
TIMEOUT_S = 20


class StorageError(RuntimeError):
    """A storage location that cannot be used: an unreachable endpoint, missing credentials,
    a bucket that does not exist or refuses writes. The message names the location;
    `reason` is the cause alone."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason or message


def _named(fn):
    """The store clients' many error types as one StorageError naming the object and the
    cause in the user's terms."""
    @functools.wraps(fn)
    def wrapper(path: str, *args, **kw):
        try:
            return fn(path, *args, **kw)
        except StorageError as e:
            raise StorageError(f"{path}: {e.reason}", e.reason) from None
        except Exception as e:  # noqa: BLE001 — boto3 and google-cloud raise many types
            scheme, bucket, _ = split(path)
            reason = _explain(scheme, bucket, e)
            raise StorageError(f"{path}: {reason}", reason) from None
    return wrapper


def configure(beam_args: Sequence[str] = ()) -> None:
    """Beam pipeline flags (`--s3_endpoint_url=…`, `--project=…`) for this process's filesystems."""
    FileSystems.set_options(PipelineOptions(list(beam_args)))


def options() -> PipelineOptions:
    """The options this process's filesystems use; defaults (from the environment) unless a
    pipeline, a Beam worker or `configure` set them. Beam's S3 filesystem refuses to work
    without any, so every remote call of `shards.fs` goes through here first."""
    # FileSystems keeps the options in a class attribute that Beam itself sets (Pipeline,
    # sdk_worker_main); there is no getter
    if getattr(FileSystems, "_pipeline_options", None) is None and RuntimeValueProvider.runtime_options is None:
        configure()
    return getattr(FileSystems, "_pipeline_options", None) or PipelineOptions([])


class _SharedS3Clients:
    """Stands in for the `boto3` module inside Beam's S3 client wrapper, which makes a new
    boto3 session and client for every filesystem call: 0.2 s of JSON parsing each on an
    idle core, over a second on a busy one, for every `exists`, `open` or `rename`. Clients
    are thread-safe, so one per process and settings serves them all (sessions are not, and
    are not shared). The settings include the AWS_* environment, which boto3 reads."""

    def __init__(self, boto3):
        self._boto3 = boto3
        self._clients: dict[tuple, object] = {}
        self.session = self

    def Session(self):  # noqa: N802 — boto3.session.Session, as Beam calls it
        return self

    def client(self, service_name: str, **kw):
        env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
        key = (os.getpid(), service_name, tuple(sorted(kw.items())), env)
        if key not in self._clients:
            self._clients[key] = self._boto3.session.Session().client(service_name, **kw)
        return self._clients[key]


def _share_beam_s3_clients() -> None:
    try:
        from apache_beam.io.aws.clients.s3 import boto3_client
    except ImportError:  # Beam without its aws extra: no s3:// at all
        return
    if boto3_client.boto3 is not None and not isinstance(boto3_client.boto3, _SharedS3Clients):
        boto3_client.boto3 = _SharedS3Clients(boto3_client.boto3)


_share_beam_s3_clients()


def split(path: str) -> tuple[str, str, str]:
    """`s3://bucket/a/b` → ("s3", "bucket", "a/b")."""
    scheme, _, rest = path.partition("://")
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


_clients: dict[tuple[str, int], tuple[PipelineOptions, object]] = {}


def _cached(kind: str, make):
    """One client per process and kind, remade when the options change (clients are slow to
    make; a forked child makes its own)."""
    key, opts = (kind, os.getpid()), options()
    if key not in _clients or _clients[key][0] is not opts:
        _clients[key] = (opts, make())
    return _clients[key][1]


def s3_client():
    """A boto3 client with the endpoint and credentials Beam's S3 filesystem uses, failing
    within TIMEOUT_S (a few retries) instead of boto3's minutes."""
    return _cached("s3", _make_s3_client)


def _make_s3_client():
    import boto3
    from botocore.config import Config

    o = options().view_as(S3Options)
    return boto3.session.Session().client(
        "s3", region_name=o.s3_region_name, api_version=o.s3_api_version, use_ssl=not o.s3_disable_ssl,
        verify=o.s3_verify, endpoint_url=o.s3_endpoint_url, aws_access_key_id=o.s3_access_key_id,
        aws_secret_access_key=o.s3_secret_access_key, aws_session_token=o.s3_session_token,
        config=Config(connect_timeout=5, read_timeout=TIMEOUT_S, retries={"max_attempts": 3, "mode": "standard"}))


def gcs_client():
    """A google-cloud-storage client as Beam's GCS filesystem makes it. Without credentials
    (and no emulator) StorageError at once, instead of Beam's half-minute of retries before it
    connects anonymously."""
    return _cached("gs", _make_gcs_client)


def _make_gcs_client():
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError

        try:
            google.auth.default()
        except DefaultCredentialsError:
            raise StorageError("no Google Cloud credentials: run `gcloud auth application-default login` "
                               "or set GOOGLE_APPLICATION_CREDENTIALS to a service account key file") from None
    from apache_beam.io.gcp.gcsio import create_storage_client

    return create_storage_client(options())


# ------------------------------------------------------------------ versioned objects
# A version is what a conditional write compares: S3's ETag, GCS's generation.
@_named
def read_versioned(path: str) -> tuple[bytes, str] | None:
    """(content, version) of an object, None where there is none."""
    scheme, bucket, key = split(path)
    if scheme == "s3":
        client = s3_client()
        try:
            r = client.get_object(Bucket=bucket, Key=key)
        except client.exceptions.NoSuchKey:
            return None
        return r["Body"].read(), r["ETag"]
    blob = gcs_client().bucket(bucket).get_blob(key, timeout=TIMEOUT_S)
    if blob is None:
        return None
    # the GCS emulator reports no generation: "" writes unconditionally (see write_if)
    return blob.download_as_bytes(timeout=TIMEOUT_S), str(blob.generation or "")


@_named
def write_if(path: str, data: bytes, version: str | None) -> bool:
    """Write `data` only if the object is still at `version` (None: only if there is no
    object; "": a store that reported no version, unconditionally). False when another
    writer got there first. Stores that ignore the condition (some S3-compatible servers,
    the GCS emulator) write anyway: callers read back."""
    scheme, bucket, key = split(path)
    if scheme == "s3":
        from botocore.exceptions import ClientError

        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version} if version else {}
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, **cond)
        except ClientError as e:
            if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") in (409, 412):
                return False
            raise
        return True
    from google.api_core.exceptions import PreconditionFailed

    try:
        gcs_client().bucket(bucket).blob(key).upload_from_string(
            data, if_generation_match=0 if version is None else int(version) if version else None,
            timeout=TIMEOUT_S)
    except PreconditionFailed:
        return False
    return True


@_named
def delete(path: str) -> None:
    scheme, bucket, key = split(path)
    if scheme == "s3":
        s3_client().delete_object(Bucket=bucket, Key=key)
        return
    from google.api_core.exceptions import NotFound

    try:
        gcs_client().bucket(bucket).blob(key).delete(timeout=TIMEOUT_S)
    except NotFound:
        pass


# ------------------------------------------------------------------ preflight
def check_writable(path: str) -> None:
    """StorageError unless an object can be written under `path` and deleted again (a probe
    object `PATH/.probe-…`): the bucket exists, the endpoint answers, credentials are there
    and allow writing. For an ingest's `output.dir`, before any work starts."""
    probe = path.rstrip("/") + f"/.probe-{uuid.uuid4().hex[:12]}"
    try:
        if not write_if(probe, b"probe", None):
            raise StorageError(f"{probe}: exists already", "a probe object could not be created")
        delete(probe)
    except StorageError as e:
        raise StorageError(f"{path}: cannot write there ({e.reason})", e.reason) from None


def _explain(scheme: str, bucket: str, e: Exception) -> str:
    """A one-line reason for a failed probe, in the user's terms."""
    name = type(e).__name__
    response = getattr(e, "response", None)  # botocore: a dict; google-cloud: an HTTP response
    code = response.get("Error", {}).get("Code") if isinstance(response, dict) else None
    status = getattr(e, "code", None)
    if name == "NoCredentialsError":
        return "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or an instance role"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionError", "TransportError") \
            or isinstance(e, (ConnectionError, TimeoutError)):
        endpoint = os.environ.get("STORAGE_EMULATOR_HOST") if scheme == "gs" else \
            (options().view_as(S3Options).s3_endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "the default")
        return f"the {scheme} endpoint {endpoint} cannot be reached: {e}"
    if code == "NoSuchBucket" or status == 404:
        return f"bucket {bucket} does not exist"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled") \
            or status in (401, 403):
        return f"no permission to write to bucket {bucket} with these credentials ({code or status})"
    return f"{name}: {e}"
