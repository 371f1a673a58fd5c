"""The loading recipe the README and every dataset card show runs as written against an
ingest output: WebDataset streaming with PyAV decoding (torchvision.io.read_video, webdataset's
old video path, is gone from the pinned torchvision), wids random access through the split's
index, and the tables with pyarrow, pandas and DuckDB."""
from __future__ import annotations

import numpy as np

from genie_pipeline.shards.card import LOADING, card_text
from genie_pipeline.shards.config import ClipsConfig
from genie_pipeline.shards.reader import read_rows
from tests.conftest import ROOT
from tests.fixtures.output import write_sprite_output

SMALL = ClipsConfig(width=64, height=48, seconds=3.2)


def test_the_recipe_loads_shards_and_tables(tmp_path):
    out = tmp_path / "out"
    write_sprite_output(out, n_train_shards=2, clips_per_shard=2, n_val_shards=1, seed=2, clips=SMALL)
    ns: dict = {}
    exec(compile(LOADING.replace("OUT", str(out)), "recipe", "exec"), ns)  # noqa: S102 — our own recipe
    frames, meta = next(iter(ns["ds"]))
    assert frames.shape == SMALL.spec.shape_THWC and frames.dtype == np.uint8 and meta["split"] == "train"
    assert len(list(ns["ds"])) == 4 and len(ns["train"]) == 4
    assert ns["clip"].shape == SMALL.spec.shape_THWC
    manifest = read_rows(str(out), "manifest")
    assert ns["manifest"].num_rows == len(ns["df"]) == len(manifest) == 6
    assert dict(zip(ns["kept"]["source"], ns["kept"]["n"])) == {"syn": 6}


def test_the_readme_and_the_card_show_the_tested_recipe(tmp_path):
    assert LOADING.replace("OUT", "out/ingest") in (ROOT / "README.md").read_text()
    out = tmp_path / "out"
    write_sprite_output(out, n_train_shards=1, clips_per_shard=2, n_val_shards=0, seed=2, clips=SMALL)
    card = card_text(str(out), {"sources": [{"name": "syn", "type": "files", "where": "/data/*.mp4"}]})
    header = card.split("---")[1]
    import yaml

    meta = yaml.safe_load(header)  # a hub reads this header
    assert meta["size_categories"] == ["n<1K"] and meta["license"] == "other"
    assert [f["split"] for f in meta["configs"][0]["data_files"]] == ["train"]  # no val shards, no val split
    assert LOADING in card and "| syn | files | /data/*.mp4 | 2 |" in card
