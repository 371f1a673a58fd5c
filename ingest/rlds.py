"""RLDS robotics datasets (Open X-Embodiment: RT-1's fractal20220817_data, Bridge, …) as video,
episode by episode, without TensorFlow.

On disk, TFDS writes a dataset as DATASET/VERSION/ with `dataset_info.json` (the splits and
how many episodes each file holds: `shardLengths`), `features.json`, and the files of each
split, NAME-SPLIT.tfrecord-NNNNN-of-MMMMM. A file is a run of TFRecord records: payload length
(uint64 LE), the length's masked CRC32C, the payload, the payload's masked CRC32C. A payload is
one episode as a `tf.train.Example` whose nested features are flattened into '/'-joined names:
RT-1's camera is `steps/observation/image`, a bytes list with one encoded JPEG (or PNG) per
step. The framing is read here by hand; the Example with protobuf (which Beam already needs),
from the four message definitions of tensorflow/core/example/feature.proto built below.

Time: an episode's steps are `control_hz` apart (no dataset records it: RT-1 runs at 3 Hz).
`fetch_episode` puts the episode's encoded frames, not re-encoded, into a small QuickTime file
with those timestamps, so the episode is decoded, resampled to clips.fps and scaled exactly as
every other video (ingest/decode.py). Resampling shows, at each output time, the step that is
on screen then: below clips.fps each step is repeated (3 Hz at 10 FPS: every step 3 or 4
times), above it steps are dropped (15 Hz: every third). A clip always spans clips.seconds of
the real episode, as for any other source.

A candidate names its file and its record's place in it, so a worker reads one episode
(skipping the records before it by their length headers) and a whole file never moves. A
record that fails its checksum becomes that episode's failure row; the others still read.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import struct
from fractions import Fraction
from typing import Iterator

from genie_pipeline.ingest.config import DownloadConfig, PreflightError, RldsSource
from genie_pipeline.ingest.download import Fetched
from genie_pipeline.ingest.errors import IngestError
from genie_pipeline.shards import fs
from genie_pipeline.shards.records import Candidate

# what a candidate's `extra` says of its episode (the record's place in its file makes it one)
RECORD, IMAGE_KEY, CONTROL_HZ = "rlds_record", "camera", "rlds_control_hz"
_SHARD_RE = re.compile(r"-(\d+)-of-(\d+)$")
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------- tf.train.Example
def _example_class():
    """tf.train.Example (BytesList, FloatList, Int64List, Feature, Features, Example) as
    protobuf message classes, in a pool of their own (TensorFlow's, if loaded, is untouched)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="genie_pipeline/rlds_example.proto", package="tensorflow",
                                              syntax="proto3")

    def message(name, *fields, oneof=None):
        m = file.message_type.add(name=name)
        if oneof:
            m.oneof_decl.add(name=oneof)
        for number, (fname, ftype, label, type_name) in enumerate(fields, 1):
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name
            if oneof:
                f.oneof_index = 0
        return m

    one, many = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("BytesList", ("value", F.TYPE_BYTES, many, None))
    message("FloatList", ("value", F.TYPE_FLOAT, many, None))
    message("Int64List", ("value", F.TYPE_INT64, many, None))
    message("Feature", ("bytes_list", F.TYPE_MESSAGE, one, ".tensorflow.BytesList"),
            ("float_list", F.TYPE_MESSAGE, one, ".tensorflow.FloatList"),
            ("int64_list", F.TYPE_MESSAGE, one, ".tensorflow.Int64List"), oneof="kind")
    features = message("Features", ("feature", F.TYPE_MESSAGE, many, ".tensorflow.Features.FeatureEntry"))
    entry = features.nested_type.add(name="FeatureEntry")  # map<string, Feature>
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=one)
    entry.field.add(name="value", number=2, type=F.TYPE_MESSAGE, label=one, type_name=".tensorflow.Feature")
    message("Example", ("features", F.TYPE_MESSAGE, one, ".tensorflow.Features"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _example_class()


# ------------------------------------------------------------------------------ records
class RecordError(ValueError):
    """A record that cannot be read: bad checksum, truncated, or not where the index says."""


class FeatureError(ValueError):
    """An episode without the configured camera: the message names the feature and the file."""


def masked_crc(data: bytes) -> int:
    """TFRecord's checksum: CRC32C, rotated and offset (so a CRC of CRCs is not a CRC)."""
    try:
        import google_crc32c
    except ImportError:
        raise ImportError("RLDS sources need google-crc32c: pip install 'genie-pipeline[rlds]'") from None
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class RecordReader:
    """Records of one TFRecord file, local or in a bucket (through shards/fs), in order: `next()`
    gives the next payload's length (None at the end), then `read()` or `skip()` it. At most
    `max_bytes` a record, if given (a larger one is a RecordError before it is read)."""

    def __init__(self, path: str, max_bytes: int | None = None):
        self.path, self.max_bytes = path, max_bytes
        self.index = -1  # the record next() last found
        self._f = fs.open_read(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def next(self) -> int | None:
        head = self._f.read(12)
        if not head:
            return None
        self.index += 1
        if len(head) < 12:
            raise self._error("the file ends inside its length header")
        (length,), (crc,) = struct.unpack("<Q", head[:8]), struct.unpack("<I", head[8:])
        if masked_crc(head[:8]) != crc:
            raise self._error("length header checksum mismatch (the records after it cannot be found)")
        if self.max_bytes is not None and length > self.max_bytes:
            raise self._error(f"{length} bytes > download.max_filesize_mb")
        return length

    def read(self, length: int) -> bytes:
        data = self._f.read(length + 4)
        if len(data) < length + 4:
            raise self._error(f"the file ends inside the record ({len(data)} of {length + 4} bytes)")
        if masked_crc(data[:length]) != struct.unpack("<I", data[length:])[0]:
            raise self._error("payload checksum mismatch")
        return data[:length]

    def skip(self, length: int) -> None:
        self._f.seek(length + 4, os.SEEK_CUR)

    def _error(self, what: str) -> RecordError:
        return RecordError(f"record {self.index} of {self.path}: {what}")


def read_record(path: str, index: int, max_bytes: int) -> bytes:
    """The payload of record `index` (0 = the first) of a TFRecord file; RecordError if it or a
    length header before it is corrupt, or the file holds fewer records."""
    with RecordReader(path, max_bytes) as r:
        for _ in range(index):
            length = r.next()
            if length is None:
                raise RecordError(f"record {index} of {path}: the file holds only {r.index + 1} records")
            r.skip(length)
        length = r.next()
        if length is None:
            raise RecordError(f"record {index} of {path}: the file holds only {r.index + 1} records")
        return r.read(length)


def count_records(path: str) -> int:
    """How many records a TFRecord file holds, by its length headers alone; a corrupt header
    counts as the last (its episode then fails alone; nothing after it can be found)."""
    with RecordReader(path) as r:
        try:
            while (length := r.next()) is not None:
                r.skip(length)
        except RecordError:
            pass
        return r.index + 1


# ------------------------------------------------------------------------------ episodes
def image_frames(payload: bytes, image_key: str, where: str) -> list[bytes]:
    """The encoded frames of `image_key` in one episode's Example. RecordError if the payload
    is not an Example; FeatureError naming the key, `where` and the image features present if
    the episode has no such feature or its first value is not a JPEG or PNG image."""
    from google.protobuf.message import DecodeError

    try:
        features = Example.FromString(payload).features.feature
    except DecodeError as e:
        raise RecordError(f"{where}: not a tf.train.Example ({e})") from None
    feature = features[image_key] if image_key in features else None  # (indexing a map adds the key)
    frames = list(feature.bytes_list.value) if feature is not None else []
    if feature is None or feature.WhichOneof("kind") != "bytes_list" or (frames and not _is_image(frames[0])):
        raise FeatureError(f"{where} has no image feature {image_key!r} "
                           f"(its image features: {', '.join(image_features(features)) or 'none'})")
    return frames


def _is_image(data: bytes) -> bool:
    return data.startswith((_JPEG, _PNG))


def image_features(features) -> list[str]:
    """The names of an Example's features that hold encoded images."""
    return sorted(k for k, f in features.items()
                  if f.WhichOneof("kind") == "bytes_list" and f.bytes_list.value and _is_image(f.bytes_list.value[0]))


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of an encoded JPEG or PNG from its header, without decoding it;
    ValueError if it is neither or the header is cut short."""
    if data.startswith(_PNG) and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    i = 2
    while data.startswith(_JPEG) and i + 9 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        if marker == 0xFF:  # a fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a payload
            i += 2
        else:  # a segment: its length follows the marker
            i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    raise ValueError("not a JPEG or PNG image (or its header is cut short)")


def write_episode_video(frames: list[bytes], control_hz: float, dest: str) -> None:
    """The episode's encoded frames, not re-encoded, as a QuickTime file at `control_hz`
    (frame i shown from i / control_hz for one step). ValueError if a frame is neither JPEG
    nor PNG or the frames mix the two."""
    import av

    kinds = {"mjpeg" if f.startswith(_JPEG) else "png" if f.startswith(_PNG) else None for f in frames}
    if None in kinds or len(kinds) != 1:
        raise ValueError(f"frames are not all JPEG or all PNG ({len(frames)} frames)")
    codec = kinds.pop()
    rate = Fraction(control_hz).limit_denominator(1000)
    with av.open(dest, "w", format="mov") as out:
        stream = out.add_stream(codec, rate=rate)
        # the container header wants a size: the first frame's (the decoder reads each frame's own)
        stream.width, stream.height = image_size(frames[0])
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "rgb24"
        out.start_encoding()  # fixes the stream's time base
        tb = stream.time_base
        for i, data in enumerate(frames):
            packet = av.Packet(data)
            packet.stream, packet.time_base = stream, tb
            packet.pts = packet.dts = round(i / rate / tb)
            packet.duration = max(1, round(1 / rate / tb))
            out.mux(packet)


def is_episode(c: Candidate) -> bool:
    return RECORD in c.extra


def fetch_episode(c: Candidate, download: DownloadConfig, scratch: str) -> Fetched:
    """Candidate `c` (an RLDS episode from discovery) as a local video file in `scratch`,
    deleted after cutting unless download.keep. IngestError: stage "download" if its file
    cannot be read, "decode" for a corrupt record (CorruptRecord), a missing camera
    (NoImageFeature) or frames that are not images (BadImage)."""
    where = f"record {c.extra[RECORD]} of {c.path}"
    try:
        payload = read_record(c.path, int(c.extra[RECORD]), int(download.max_filesize_mb * 2**20))
        frames = image_frames(payload, c.extra[IMAGE_KEY], where)
    except RecordError as e:
        raise IngestError("decode", "CorruptRecord", str(e)) from None
    except FeatureError as e:
        raise IngestError("decode", "NoImageFeature", str(e)) from None
    except OSError as e:
        if fs.environment_error(e):
            raise
        raise IngestError("download", type(e).__name__, f"cannot read {c.path}: {e}") from None
    if not frames:
        raise IngestError("cut", "TooShort", f"{where}: the episode has no steps")
    try:
        width, height = image_size(frames[0])
    except ValueError as e:
        raise IngestError("decode", "BadImage", f"{where}: {c.extra[IMAGE_KEY]}: {e}") from None
    # before anything is decoded: a small JPEG can claim a size that takes gigabytes
    if width * height > download.max_pixels:
        raise IngestError("probe", "TooManyPixels", f"{where}: {width}x{height} = {width * height} pixels "
                                                    f"> download.max_pixels ({download.max_pixels})")
    os.makedirs(scratch, exist_ok=True)
    dest = os.path.join(scratch, f"{c.video_key}.mov")  # the key is safe_id-derived: no path from the data
    try:
        write_episode_video(frames, float(c.extra[CONTROL_HZ]), dest)
    except Exception as e:  # a frame PyAV cannot parse, or not an image at all
        fs.remove(dest)
        if fs.environment_error(e):
            raise
        raise IngestError("decode", "BadImage", f"{where}: {c.extra[IMAGE_KEY]}: {type(e).__name__}: {e}") from None
    return Fetched(dest, temporary=not download.keep)


# ------------------------------------------------------------------------------ the split
def split_files(root: str, split: str) -> list[str]:
    """The TFRecord files of `split` under `root` (local or a bucket), in shard order."""
    root = root.rstrip("/")
    pattern = f"{root}/*-{split}.tfrecord-*" if fs.is_remote(root) else os.path.join(os.path.abspath(root),
                                                                                       f"*-{split}.tfrecord-*")
    return sorted(path for path, _ in fs.list_files(pattern))


def dataset_info(root: str) -> dict:
    """`dataset_info.json` of the dataset ({} if there is none or it is not JSON: the files
    themselves are then counted)."""
    path = fs.join(root.rstrip("/"), "dataset_info.json")
    try:
        info = json.loads(fs.read_bytes(path))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def shard_number(path: str, position: int) -> int:
    """The NNNNN of NAME-SPLIT.tfrecord-NNNNN-of-MMMMM (its position among the files otherwise)."""
    m = _SHARD_RE.search(posixpath.basename(path))
    return int(m.group(1)) if m else position


def episode_counts(info: dict, split: str, files: list[str]) -> Iterator[tuple[int, str, int | Exception]]:
    """(shard number, file, how many episodes it holds) for each file of `split`: the count
    from dataset_info.json's shardLengths where they describe these files, else counted from
    the file's record headers (an exception in place of the count if it cannot be read)."""
    lengths = next((s.get("shardLengths") for s in info.get("splits") or [] if s.get("name") == split), None) or []
    for position, path in enumerate(files):
        shard = shard_number(path, position)
        m = _SHARD_RE.search(posixpath.basename(path))
        if m and int(m.group(2)) == len(lengths) and shard < len(lengths):
            yield shard, path, int(lengths[shard])
            continue
        try:
            yield shard, path, count_records(path)
        except Exception as e:  # an unreadable file fails alone
            yield shard, path, e


def check_rlds_source(src: RldsSource, key: str) -> None:
    """PreflightError, before any work, unless the split has files and its first readable
    episode has `src.image_key` as an image feature (`key`: the source's place in the config,
    e.g. sources.0). Later files are not opened: an episode without the feature becomes a
    failure row (NoImageFeature)."""
    try:
        files = split_files(src.root, src.split)
    except (OSError, ValueError) as e:  # a bucket Beam has no filesystem for, or cannot list
        raise PreflightError(f"{key}.root", f"cannot list {src.root}: {e}") from None
    if not files:
        raise PreflightError(f"{key}.root", f"no files of split {src.split!r} (*-{src.split}.tfrecord-*) "
                                            f"under {src.root}")
    try:
        payload = _first_readable(files[0])
    except ImportError as e:
        raise PreflightError(f"{key}.type", str(e)) from None
    except (RecordError, OSError) as e:
        raise PreflightError(f"{key}.root", f"cannot read an episode of {files[0]}: {e}") from None
    try:
        image_frames(payload, src.image_key, files[0])
    except (FeatureError, RecordError) as e:
        raise PreflightError(f"{key}.image_key", str(e)) from None


def _first_readable(path: str, tries: int = 8) -> bytes:
    """The payload of the first of a file's first `tries` records whose checksums hold."""
    with RecordReader(path) as r:
        error = RecordError(f"{path} holds no record")
        for _ in range(tries):
            length = r.next()  # a bad header ends the search: nothing after it can be found
            if length is None:
                break
            try:
                return r.read(length)
            except RecordError as e:
                error = e
        raise error
