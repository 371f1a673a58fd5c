"""The clip store: one tar per video, `OUT/clips/{video_key}.tar`, holding every clip of the
video (kept or not) and its `VideoResult`. Written in one atomic step, it is the unit of
resume, and what refilter and the quality loop read instead of decoding sources again.
"""
from __future__ import annotations

import io
import json
import tarfile

from genie_pipeline.shards import fs
from genie_pipeline.shards.records import VideoResult

VIDEO_JSON = "_video.json"


def store_path(out_dir: str, vkey: str) -> str:
    return fs.join(out_dir, "clips", f"{vkey}.tar")


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # mtime 0: re-runs write equal bytes
    tar.addfile(info, io.BytesIO(data))


def write_store(path: str, result: VideoResult, clips: list[tuple[str, bytes]]) -> None:
    """All clips of one video plus its result, in one atomic file: the unit of resume."""
    with fs.atomic_output(path) as tmp, tarfile.open(tmp, "w") as tar:
        for key, data in clips:
            add_member(tar, f"{key}.mp4", data)
        add_member(tar, VIDEO_JSON, json.dumps(result.to_json(), sort_keys=True).encode())


def read_store(path: str) -> tuple[VideoResult, dict[str, bytes]]:
    with fs.open_read(path) as f, tarfile.open(fileobj=io.BytesIO(f.read()), mode="r") as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    result = VideoResult.from_json(json.loads(files.pop(VIDEO_JSON)))
    return result, {name[: -len(".mp4")]: data for name, data in files.items() if name.endswith(".mp4")}


def read_store_result(path: str) -> VideoResult:
    """Only the result record, without holding every clip in memory."""
    with fs.open_read(path) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for m in tar:
            if m.name == VIDEO_JSON:
                return VideoResult.from_json(json.loads(tar.extractfile(m).read()))
    raise ValueError(f"{path}: no {VIDEO_JSON}")
