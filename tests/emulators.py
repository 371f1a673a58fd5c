"""Real object-store emulators for tests, started as subprocesses from registry packages:
moto's S3 server (`moto_server`, package `moto[server]`) and `gcp-storage-emulator` for GCS.
Each is a real HTTP server on 127.0.0.1; the code under test reaches it through Beam's
filesystems and the official clients, configured by the environment (as a user's would be),
so that child processes (the CLI, Beam workers, torchrun ranks) reach it too.

    with s3_emulator() as emu:      # sets AWS_ENDPOINT_URL and test credentials in os.environ
        root = emu.bucket()         # "s3://b-1a2b3c4d", a new empty bucket
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log, timeout_s: float = 60) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"emulator exited with {proc.returncode}: {log.read()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"emulator at {url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def _set_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _server(cmd: list[str], url: str) -> Iterator[subprocess.Popen]:
    # its request log goes to a file: into a pipe nobody reads, it fills the pipe and every
    # request thread of the server blocks on the logging lock
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(url, proc, log)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Emulator:
    scheme: str
    url: str  # the server's endpoint
    env: dict[str, str]  # what a child process needs to reach it (already in os.environ)
    make_bucket: Callable[[str], None]

    def bucket(self) -> str:
        """A new empty bucket, as `scheme://name`."""
        name = f"b-{uuid.uuid4().hex[:10]}"
        self.make_bucket(name)
        return f"{self.scheme}://{name}"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@contextlib.contextmanager
def s3_emulator() -> Iterator[Emulator]:
    """moto's S3 server; AWS_ENDPOINT_URL and test credentials in os.environ meanwhile."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    with _server([_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], url + "/moto-api/"), _set_env(env):
        import boto3

        client = boto3.client("s3")
        yield Emulator("s3", url, env, lambda name: client.create_bucket(Bucket=name))


@contextlib.contextmanager
def gcs_emulator() -> Iterator[Emulator]:
    """gcp-storage-emulator (in memory); STORAGE_EMULATOR_HOST in os.environ meanwhile, and
    Application Default Credentials that need no token refresh (an `authorized_user` file
    with a token that never expires): without any, Beam retries for half a minute per
    process before it connects anonymously."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = tempfile.mkdtemp(prefix="gcs-emulator-")
    adc = os.path.join(tmp, "adc.json")
    with open(adc, "w") as f:
        json.dump({"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
                   "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}, f)
    env = {"STORAGE_EMULATOR_HOST": url, "GOOGLE_APPLICATION_CREDENTIALS": adc, "GOOGLE_CLOUD_PROJECT": "test"}
    try:
        with _server([_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                      "--in-memory", "--quiet"], url + "/storage/v1/b?project=test"), _set_env(env):
            from google.cloud import storage

            client = storage.Client(project="test")
            yield Emulator("gs", url, env, lambda name: client.create_bucket(name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
