"""Active labelling: the label page offers the clips the current model is least sure of, and a
stratified share of the rest (`label --active`)."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest

from genie_pipeline.cli import main
from genie_pipeline.filtering.quality.label.sample import active_sample, stratified_sample


@dataclass
class C:
    key: str
    video_id: str
    stratum: str


def _clips():
    clips = [C(f"v{v}_{i}", f"v{v}", "yt" if v < 10 else "sim") for v in range(20) for i in range(10)]
    margin = {c.key: (int(c.key[1:].split("_")[0]) * 10 + int(c.key.split("_")[1])) / 200 for c in clips}
    return clips, margin


def test_active_sample_takes_the_least_sure_first_then_a_stratified_rest():
    clips, margin = _clips()
    s = active_sample(clips, 40, margin, share=0.5, seed=3)
    assert len(s) == len({c.key for c in s}) == 40
    head = s[:20]
    # the 20 least sure, at most 2 per video: videos v0..v9, clips 0 and 1 of each
    assert {c.key for c in head} == {f"v{v}_{i}" for v in range(10) for i in (0, 1)}
    assert max(Counter(c.video_id for c in head).values()) == 2
    rest = s[20:]
    assert not {c.key for c in rest} & {c.key for c in head}
    assert Counter(c.stratum for c in rest)["sim"] >= 8  # the rest still covers the input
    assert all(a.video_id != b.video_id for a, b in zip(s, s[1:]))
    assert active_sample(clips, 40, margin, share=0.5, seed=3) == s  # deterministic
    # share 0: the plain stratified sample; clips without a margin only in the stratified part
    assert active_sample(clips, 40, {}, share=0.0, seed=3) == stratified_sample(clips, 40, 3)
    only = active_sample(clips, 10, {"v19_9": 0.0}, share=0.5, seed=3)
    assert only[0].key == "v19_9" and len(only) == 10


def test_label_active_asks_the_model_and_needs_one(tmp_path, capsys, monkeypatch):
    """label --active without filters.quality.model exits 2 naming it; with one, the sample's
    first clips are the unlabelled ones whose score is nearest the model's threshold."""
    torch = pytest.importorskip("torch")
    from genie_pipeline.filtering.quality.label import server as S
    from genie_pipeline.filtering.quality.label.store import LabelStore
    from genie_pipeline.filtering.quality.model import QualityNet, save_quality_model
    from genie_pipeline.filtering.quality.score import uncertainty
    from genie_pipeline.shards.reader import ClipIndex
    from tests.fixtures.output import write_quality_output

    out = tmp_path / "out"
    write_quality_output(out, n_good=3, n_bad=3, clips_per_video=2, seed=4)
    assert main(["label", str(out), "--active"]) == 2
    assert "filters.quality.model" in capsys.readouterr().err

    torch.manual_seed(0)
    model = save_quality_model(QualityNet(frames_per_clip=2).eval(), tmp_path / "m.pt", {"threshold": 0.5})
    index = ClipIndex.open(out)
    keys = list(index.clips)
    db = tmp_path / "labels.sqlite"
    with LabelStore(db) as st:
        st.add(keys[0], "good", "ann")
    seen = {}

    def fake_serve(index, store, **kw):  # the page itself is tested in test_label*; here: what it is given
        app = S.LabelApp(index, store, target=kw["target"])
        seen["sample"] = app.prepare_sample(seed=kw["seed"], resample=kw["resample"], active=kw["active"])
        seen["active"] = kw["active"]

    monkeypatch.setattr("genie_pipeline.filtering.quality.serve_labels", fake_serve)
    argv = ["label", str(out), "--active", "--target", "6", "--set", f"filters.quality.model={model}",
            "--set", f"filters.quality.labels_db={db}", "--set", "filters.quality.active_share=0.5"]
    assert main(argv) == 0
    margin = seen["active"]["margin"]
    assert keys[0] not in margin and set(margin) == set(keys[1:])  # labelled clips are not asked again
    assert margin == pytest.approx(uncertainty(index, str(model), keys[1:]))
    least = sorted(margin, key=margin.get)
    first = seen["sample"][:3]
    assert len(seen["sample"]) == 6 and set(first) <= set(least[:6])
