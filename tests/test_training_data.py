"""Training loader: windows from WebDataset shards, determinism, rank/worker splits, bad data, resume."""
from __future__ import annotations

import io
import json
import os

import av
import numpy as np
import pytest
import torch
import webdataset as wds

from genie_pipeline.shards.reader import DataError, resolve_inputs
from genie_pipeline.training.decoders import DecordDecoder, PyAVDecoder, TorchCodecDecoder, make_decoder
from genie_pipeline.training.loader import WindowDataset, WindowLoader
from genie_pipeline.shards.clip import encode_clip
from genie_pipeline.shards.config import ClipsConfig
from tests.fixtures.footage import sprite_frames
from tests.fixtures.output import write_sprite_output

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def ingest_out(tmp_path_factory):
    """An ingest-like output dir: 4 train shards x 3 clips, 1 val shard, manifest.parquet."""
    out = tmp_path_factory.mktemp("ingest")
    write_sprite_output(out, n_train_shards=4, clips_per_shard=3, n_val_shards=1, seed=1)
    return out


def all_keys(ingest_out, split="train"):
    keys = []
    for tar in sorted((ingest_out / "shards").glob(f"{split}-*.tar")):
        keys += [s["__key__"] for s in wds.WebDataset(str(tar), shardshuffle=False)]
    return keys


def torchcodec_or_skip() -> TorchCodecDecoder:
    try:
        return TorchCodecDecoder()
    except ImportError as e:  # optional extra: not installed, or no FFmpeg shared libraries
        pytest.skip(f"torchcodec not usable here: {e}")


def all_decoders() -> list:
    """Every backend that imports here (torchcodec is optional)."""
    decs = [PyAVDecoder(), DecordDecoder()]
    try:
        decs.append(TorchCodecDecoder())
    except ImportError:
        pass
    return decs


def one_epoch(ds: WindowDataset, stream: int) -> list[dict]:
    ds.infinite = False
    return list(ds.iter_stream(stream))


def test_resolve_inputs(ingest_out):
    ss = resolve_inputs([str(ingest_out)])
    assert [os.path.basename(s) for s in ss.shards] == [f"train-00000{i}.tar" for i in range(4)]
    assert ss.manifests == [str(ingest_out)]
    assert len(resolve_inputs([str(ingest_out / "shards" / "val-*.tar")]).shards) == 1
    assert len(resolve_inputs([str(ingest_out / "shards")], split="val").shards) == 1
    with pytest.raises(DataError):
        resolve_inputs([str(ingest_out / "nope")])
    with pytest.raises(DataError):
        resolve_inputs([str(ingest_out / "shards" / "test-*.tar")])


def test_windows_shape_dtype_and_content(ingest_out):
    shards = resolve_inputs([str(ingest_out)]).shards
    loader = WindowLoader(shards, batch_size=4, frames=16, num_workers=0, windows_per_clip=4, clips_per_group=2,
                          shuffle_buffer=4, decoder="pyav")
    batch = next(iter(loader))
    v = batch["video"]
    assert v.shape == (4, 16, 3, 90, 160) and v.dtype == torch.uint8
    assert v.float().std() > 10  # real picture content, not blank frames
    assert batch["keys"][0].startswith("syn_")
    assert all(0 <= int(s) <= 160 - 16 for s in batch["starts"])
    assert loader.positions[0]["windows"] == 4


def test_window_matches_source_frames(tmp_path):
    """A window holds frames start..start+T-1 of the clip (within h264 + colour conversion error)."""
    spec = ClipsConfig().spec
    frames = sprite_frames(5, spec)
    mp4 = encode_clip(frames, spec)
    for dec in all_decoders():
        got = dec.decode(mp4, [37, 38, 39, 100]).permute(0, 2, 3, 1).float()
        want = torch.from_numpy(frames[[37, 38, 39, 100]]).float()
        assert (got - want).abs().mean() < 6, dec.name
        # a neighbouring frame is clearly further away (the sprite and background move)
        assert (got[0] - torch.from_numpy(frames[45]).float()).abs().mean() > (got[0] - want[0]).abs().mean()


def test_decoders_agree(ingest_out):
    """The same frames (two windows, out of order, a repeat) from every backend, within the
    rounding of their YUV→RGB conversions."""
    data = next(iter(wds.WebDataset(str(ingest_out / "shards" / "train-000000.tar"), shardshuffle=False)))["mp4"]
    idx = [3, 4, 5, 150, 159, 3] + list(range(64, 80))
    ref, *others = [d.decode(data, idx) for d in all_decoders()]
    assert ref.shape == (22, 3, 90, 160) and torch.equal(ref[0], ref[5])
    for got in others:
        assert got.shape == ref.shape and got.dtype == torch.uint8
        diff = (got.float() - ref.float()).abs()
        assert diff.mean() < 2.0 and diff.amax(dim=(1, 2, 3)).max() < 40
        assert torch.equal(got[0], got[5])


def test_auto_decoder_is_torchcodec_when_installed():
    try:
        TorchCodecDecoder()
        want = "torchcodec"
    except ImportError:
        want = "pyav"  # the suite runs without the optional extra too
    dec = make_decoder("auto")
    assert dec.name == want and dec.secondary is not None
    with pytest.raises(ValueError, match="unknown decoder"):
        make_decoder("nope")


class CountingReader(io.RawIOBase):
    """A clip as a readable, seekable binary file that records which byte ranges were read."""

    def __init__(self, data: bytes):
        self.f, self.spans = io.BytesIO(data), []

    def readable(self):
        return True

    def seekable(self):
        return True

    def read(self, n=-1):
        at = self.f.tell()
        b = self.f.read(n)
        self.spans.append((at, at + len(b)))
        return b

    def seek(self, offset, whence=0):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()


def test_torchcodec_seeks_to_the_keyframe_before_the_window():
    """Counted, not timed: a frame whose compressed bytes were never read was not decoded. For
    the last window (frames 144..159, keyframe at 144) torchcodec reads the packets of that GOP
    and of the few frames FFmpeg probes on open, never those of GOPs 16..143; a decode from
    frame 0 (PyAVDecoder, decord) passes through all 160."""
    dec = torchcodec_or_skip()
    spec = ClipsConfig().spec
    # noise compresses badly: ~8 kB per frame, so FFmpeg's 64 kB reads resolve single GOPs
    frames = np.random.default_rng(0).integers(0, 256, spec.shape_THWC, dtype=np.uint8)
    data = encode_clip(frames, spec)
    with av.open(io.BytesIO(data)) as c:
        packets = sorted((p.pts, p.pos, p.pos + p.size) for p in c.demux(video=0) if p.size)
    assert len(packets) == spec.frames
    src = CountingReader(data)
    got = dec.decode(src, list(range(144, 160)))
    read = [i for i, (_, a, b) in enumerate(packets) if any(x < b and a < y for x, y in src.spans)]
    assert set(range(144, 160)) <= set(read)
    assert not set(range(16, 144)) & set(read)
    assert len(read) <= 32 < spec.frames
    want = PyAVDecoder().decode(data, list(range(144, 160)))
    assert (got.float() - want.float()).abs().mean() < 2.0


def test_auto_decoder_falls_back_to_the_other_backend(ingest_out):
    from genie_pipeline.training.decoders import DecodeError, FallbackDecoder

    class Broken(PyAVDecoder):
        def decode(self, data, indices):
            raise DecodeError("boom")

    data = next(iter(wds.WebDataset(str(ingest_out / "shards" / "train-000000.tar"), shardshuffle=False)))["mp4"]
    dec = FallbackDecoder(Broken(), DecordDecoder())
    assert dec.decode(data, [0, 1]).shape == (2, 3, 90, 160) and dec.fallbacks == 1
    with pytest.raises(DecodeError):
        FallbackDecoder(Broken(), None).decode(data, [0])


def test_resize(ingest_out):
    shards = resolve_inputs([str(ingest_out)]).shards
    ds = WindowDataset(shards, 2, 8, resolution=(48, 80), windows_per_clip=2, clips_per_group=1, shuffle_buffer=1)
    b = next(ds.iter_stream(0))
    assert b["video"].shape == (2, 8, 3, 48, 80) and b["video"].dtype == torch.uint8


def test_deterministic_with_seed(ingest_out):
    shards = resolve_inputs([str(ingest_out)]).shards
    kw = dict(windows_per_clip=3, clips_per_group=2, shuffle_buffer=4)

    def take(seed, n=5):
        it = WindowDataset(shards, 3, 16, seed=seed, **kw).iter_stream(0)
        return [next(it) for _ in range(n)]

    a, b, c = take(0), take(0), take(1)
    assert [x["keys"] for x in a] == [x["keys"] for x in b]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(a, b))
    assert all(torch.equal(x["starts"], y["starts"]) for x, y in zip(a, b))
    assert [x["keys"] for x in a] != [x["keys"] for x in c] or not all(
        torch.equal(x["starts"], y["starts"]) for x, y in zip(a, c))
    # later epochs differ from the first (new shard order and new windows)
    it = WindowDataset(shards, 12 * 3, 16, seed=0, **kw).iter_stream(0)
    e0, e1 = next(it), next(it)
    assert sorted(e0["keys"]) == sorted(e1["keys"])  # one batch = one full epoch
    assert e0["keys"] != e1["keys"] or not torch.equal(e0["starts"], e1["starts"])


@pytest.mark.parametrize("n_shards", [4, 2])
def test_split_by_rank_and_worker_is_disjoint(ingest_out, n_shards):
    """4 streams (2 ranks x 2 workers): by shard with 4 shards, by clip with 2 shards."""
    shards = resolve_inputs([str(ingest_out)]).shards[:n_shards]
    expected = set(all_keys(ingest_out)[: 3 * n_shards])
    seen = []
    for rank in range(2):
        ds = WindowDataset(shards, 1, 16, rank=rank, world_size=2, num_workers=2, windows_per_clip=1,
                           clips_per_group=1, shuffle_buffer=2)
        for worker in range(2):
            stream = ds.stream_id(worker)
            assert stream == rank * 2 + worker
            keys = {k for b in one_epoch(ds, stream) for k in b["keys"]}
            assert keys, (rank, worker)
            seen.append(keys)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not seen[i] & seen[j], (i, j)
    assert set().union(*seen) == expected


def test_dataloader_workers_read_disjoint_streams(ingest_out):
    shards = resolve_inputs([str(ingest_out)]).shards
    loader = WindowLoader(shards, batch_size=2, frames=8, num_workers=2, windows_per_clip=2, clips_per_group=1,
                          shuffle_buffer=2, seed=3)
    it = iter(loader)
    batches = [next(it) for _ in range(6)]
    assert [b["worker"] for b in batches] == [0, 1] * 3
    keys = {w: {k for b in batches if b["worker"] == w for k in b["keys"]} for w in (0, 1)}
    assert keys[0] and keys[1] and not keys[0] & keys[1]
    st = loader.state_dict()
    loader.close()
    assert st["batches"] == 6 and st["positions"][0]["windows"] == 6 and st["positions"][1]["windows"] == 6


def _write_tar(path, samples):
    with wds.TarWriter(str(path)) as sink:
        for s in samples:
            sink.write(s)


def _bad_dir(tmp_path, ingest_out, n_good=4):
    """The good train shards, a garbage shard, a truncated shard, a shard with one undecodable clip."""
    d = tmp_path / "shards"
    d.mkdir()
    for i in range(n_good):
        os.link(ingest_out / "shards" / f"train-{i:06d}.tar", d / f"train-{i:06d}.tar")
    (d / "train-000010.tar").write_bytes(os.urandom(5000))
    data = (ingest_out / "shards" / "train-000000.tar").read_bytes()
    (d / "train-000011.tar").write_bytes(data[: len(data) // 3])
    meta = {"key": "bad_clip", "n_frames": 160}
    _write_tar(d / "train-000012.tar", [
        {"__key__": "bad_clip", "mp4": b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000), "json": json.dumps(meta).encode()},
    ])
    return d


def test_corrupt_shards_and_samples_are_skipped_and_counted(tmp_path, ingest_out):
    d = _bad_dir(tmp_path, ingest_out)
    shards = resolve_inputs([str(d)]).shards
    assert len(shards) == 7
    ds = WindowDataset(shards + [str(d / "train-000099.tar")], 4, 16, windows_per_clip=1, clips_per_group=2,
                       shuffle_buffer=4, max_bad_shard_fraction=0.5)
    batches = one_epoch(ds, 0)
    keys = {k for b in batches for k in b["keys"]}
    assert set(all_keys(ingest_out)) <= keys  # every good clip still arrives
    pos = batches[-1]["position"]
    assert pos["bad_shards"] == 3  # garbage, truncated, missing
    assert pos["bad_samples"] >= 1  # the undecodable clip
    assert "bad_clip" not in keys


def test_too_many_bad_shards_raise(tmp_path, ingest_out):
    d = _bad_dir(tmp_path, ingest_out)
    shards = resolve_inputs([str(d)]).shards
    ds = WindowDataset(shards, 4, 16, windows_per_clip=1, clips_per_group=2, shuffle_buffer=4,
                       max_bad_shard_fraction=0.1)
    with pytest.raises(DataError, match="missing or corrupt"):
        one_epoch(ds, 0)
    # the same through DataLoader workers: the error reaches the trainer as DataError
    loader = WindowLoader(shards, 4, 16, num_workers=1, windows_per_clip=1, clips_per_group=2, shuffle_buffer=4,
                          max_bad_shard_fraction=0.1)
    try:
        with pytest.raises(DataError):
            for _ in range(20):
                next(loader)
    finally:
        loader.close()
    # nothing usable at all
    ds = WindowDataset([str(d / "train-000010.tar")], 1, 16, max_bad_shard_fraction=1.0)
    with pytest.raises(DataError, match="no usable window"):
        next(ds.iter_stream(0))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly(ingest_out, num_workers):
    shards = resolve_inputs([str(ingest_out)]).shards
    kw = dict(windows_per_clip=3, clips_per_group=2, shuffle_buffer=3, seed=5, num_workers=num_workers)
    full = WindowLoader(shards, 5, 8, **kw)
    ref = [next(full) for _ in range(12)]  # > 1 epoch for every stream
    part = WindowLoader(shards, 5, 8, **kw)
    for _ in range(7):
        next(part)
    state = part.state_dict()
    part.close()
    resumed = WindowLoader(shards, 5, 8, state=state, **kw)
    rest = [next(resumed) for _ in range(5)]
    for a, b in zip(ref[7:], rest):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["starts"], b["starts"])
        assert torch.equal(a["video"], b["video"])
    assert resumed.state_dict()["positions"] == full.state_dict()["positions"]
    full.close()
    resumed.close()


def test_torchcodec_bad_clips_raise_decode_error():
    from genie_pipeline.training.decoders import DecodeError

    dec = torchcodec_or_skip()
    spec = ClipsConfig().spec
    mp4 = encode_clip(sprite_frames(2, spec), spec)
    for data, idx, match in ((mp4, [spec.frames], "IndexError"), (mp4[: len(mp4) // 2], [0], "RuntimeError"),
                             (b"not a video" * 40, [0], "RuntimeError"), (mp4, [], "no frames")):
        with pytest.raises(DecodeError, match=match):
            dec.decode(data, idx)
