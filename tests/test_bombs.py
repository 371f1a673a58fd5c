"""Pixel bombs (issue 24): a few hundred bytes of PNG claiming 16000×16000, alone, as "mp4", or
inside MOV/MKV whose header says 16×16, are refused as TooManyPixels before a frame is
decoded, everywhere a video is opened: probe, ingest decoding, verify's clip check, the
training decoders (PyAV, decord, and the "auto" chain, which must not hand a refused clip to
the next backend) and the quality sampler. Each entry runs in a fresh process under
/usr/bin/time; before the fix each of these peaked at 0.8–2.7 GB."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT, ffmpeg
from tests.fixtures.bombs import ENTRIES, peak_rss, write_bombs

# what the entry's own imports cost is subtracted; a refused bomb adds a few MB, a decoded one
# from 768 MB (8-bit RGB) to 2 GB (16-bit RGBA)
MAX_GROWTH_MB = 60


@pytest.fixture(scope="module")
def bombs(tmp_path_factory):
    return write_bombs(tmp_path_factory.mktemp("bombs"), ffmpeg())


# each entry costs ~15 s of fresh processes: probe and verify keep the fast suite's check
SLOW = {"training_loader", "training_decord", "ingest_decode", "quality_frames"}


@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow) if e in SLOW else e for e in sorted(ENTRIES)])
def test_every_bomb_is_refused_before_it_costs_memory(bombs, entry):
    if entry == "training_decord":
        pytest.importorskip("decord")
    base, _ = peak_rss(entry, [], ROOT, call=False)
    peak, got = peak_rss(entry, list(bombs.values()), ROOT)
    assert set(got) == {str(p) for p in bombs.values()}, got
    for path, outcome in got.items():
        assert "TooManyPixels" in outcome, (path, outcome)
        assert "16000x16000" in outcome, (path, outcome)  # the size the bomb claimed is named
    assert peak - base < MAX_GROWTH_MB, f"{entry}: {peak:.0f} MB peak against {base:.0f} MB for its imports"


def test_a_normal_clip_still_decodes_through_the_capped_opener(tmp_path):
    from genie_pipeline.shards.clip import ClipSpec, check_clip, encode_clip
    from genie_pipeline.training.decoders import make_decoder
    import numpy as np

    spec = ClipSpec(fps=10, width=160, height=90, frames=16, keyframe_interval=16, crf=23)
    data = encode_clip(np.zeros(spec.shape_THWC, np.uint8), spec)
    assert check_clip(data, spec) is None
    assert tuple(make_decoder("auto").decode(data, [0, 15]).shape) == (2, 3, 90, 160)
