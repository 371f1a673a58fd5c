"""The synthetic-footage fixtures are real ingest outputs: written by the shards layer's own
store, shard writer and commit, at the ClipsConfig's spec, and clean under `verify`."""
from __future__ import annotations

import json

import numpy as np

from genie_pipeline.shards.clip import decode_clip
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.reader import ClipIndex, read_rows, read_spec, read_stats, resolve_inputs
from genie_pipeline.shards.store import read_store
from genie_pipeline.shards.verify import verify
from tests.fixtures.footage import BAD_KINDS, GOOD_KINDS, render, sprite_frames
from tests.fixtures.output import write_quality_output, write_sprite_output

# a small spec, not the default: sizes and lengths come from the config, not from constants
SMALL = ClipsConfig(width=64, height=48, seconds=3.2)


def test_quality_output_is_a_verified_ingest_output(tmp_path):
    out = tmp_path / "out"
    info = write_quality_output(out, n_good=2, n_bad=4, clips_per_video=2, seed=1, clips=SMALL)
    assert verify(str(out)) == []
    assert read_spec(str(out)) == SMALL.spec
    assert read_stats(str(out))["clip_spec"] == SMALL.spec.to_json()
    manifest = read_rows(str(out), "manifest")
    assert len(manifest) == 12 and len(read_rows(str(out), "videos")) == len(read_rows(str(out), "candidates")) == 6
    index = ClipIndex.open(out)
    assert index.kind == "ingest" and set(index.clips) == {r["key"] for r in manifest}
    assert all(c.channel and c.game for c in index.clips.values())  # strata from the candidates table
    for r in manifest:
        assert decode_clip(index.read(r["key"])).shape == SMALL.spec.shape_THWC
        assert r["kept"] == (r["reason"] != "black") and bool(r["shard"]) == r["kept"]
    for v in info["videos"]:  # returned as stored, with the final shard names of the manifest
        stored, clips = read_store(v.store)
        assert [c.key for c in stored.clips] == [c.key for c in v.clips] == sorted(clips)
        assert [c.shard for c in v.clips] == [next(r["shard"] for r in manifest if r["key"] == c.key) for c in v.clips]
    catalog = [json.loads(line) for line in open(info["catalog"])]
    assert sorted(e["quality_label"] for e in catalog) == ["bad"] * 4 + ["good"] * 2
    # the same seed writes the same clips
    again = write_quality_output(tmp_path / "again", n_good=2, n_bad=4, clips_per_video=2, seed=1, clips=SMALL)
    assert [read_store(v.store)[1] for v in again["videos"]] == [read_store(v.store)[1] for v in info["videos"]]


def test_sprite_output_rolls_shards_of_the_given_size(tmp_path):
    paths = write_sprite_output(tmp_path, n_train_shards=2, clips_per_shard=2, n_val_shards=1, seed=3, clips=SMALL)
    assert [p.rsplit("/", 1)[1] for p in paths] == ["train-000000.tar", "train-000001.tar", "val-000000.tar"]
    assert verify(str(tmp_path)) == []
    assert resolve_inputs([str(tmp_path)]).shards == paths[:2]
    manifest = read_rows(str(tmp_path), "manifest")
    assert [r["key"] for r in manifest] == [f"syn_vid{i:04d}_000000000" for i in range(6)]
    assert [r["shard"] for r in manifest] == ["train-000000.tar"] * 2 + ["train-000001.tar"] * 2 + ["val-000000.tar"] * 2
    index = ClipIndex.open(tmp_path)
    first = decode_clip(index.read("syn_vid0000_000000000")).astype(np.float32)
    assert np.abs(first - sprite_frames(3 * 100003, SMALL.spec)).mean() < 6  # clip i is sprite_frames(seed*100003+i)


def test_every_kind_renders_at_the_spec():
    rng = np.random.default_rng(0)
    for kind in GOOD_KINDS + BAD_KINDS:
        frames = render(kind, rng, SMALL.spec)
        assert frames.shape == SMALL.spec.shape_THWC and frames.dtype == np.uint8, kind
    moving = sprite_frames(0, SMALL.spec)
    assert moving.shape == SMALL.spec.shape_THWC and (moving[1:] != moving[:-1]).any(axis=(1, 2, 3)).all()
