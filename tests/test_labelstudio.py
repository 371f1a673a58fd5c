"""Label Studio export: what Label Studio's project import accepts, absolute clip URLs, our round trip."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from urllib.parse import urlparse

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from genie_pipeline.filtering.quality import QualityError, export_labels, import_labels  # noqa: E402
from genie_pipeline.filtering.quality.label.labelstudio import (LABEL_CONFIG, export_tasks,  # noqa: E402
                                                                parse_annotators, parse_labelstudio)
from genie_pipeline.filtering.quality.label.store import LabelStore  # noqa: E402
from genie_pipeline.shards.reader import ClipIndex  # noqa: E402
from tests.fixtures.output import write_quality_output  # noqa: E402

# Members of the Label Studio organisation the tasks are imported into: email -> user id.
MEMBERS = {"ann@example.org": 7, "admin@example.org": 1}


def label_studio_import_errors(tasks, label_config: str, members: dict[str, int]) -> list[str]:
    """What Label Studio's project import (POST /api/projects/ID/import, or a JSON file in the
    Import dialog) refuses in `tasks`, by its own rules, read from its source:
    - label_studio/tasks/validation.py `TaskValidator.validate`/`check_data`: a non-empty list
      of dicts with a `data` dict holding every `$variable` of the config's object tags (Video
      and most others: a str; Header/Text: str, int or float); `annotations` a list of dicts,
      each with a `result` list;
    - label_studio/tasks/serializers.py `BaseTaskSerializerBulk._insert_valid_completed_by`:
      `completed_by` absent/None (the importing user), {"email": E} with E a member's email
      (settings.ALLOW_IMPORT_TASKS_WITH_UNKNOWN_EMAILS is off by default), or a member's integer
      id; anything else, a name included, fails the import;
    - label_studio_sdk/label_interface/interface.py `validate_region`: a result's from_name is a
      control tag of the config, to_name its toName, type its tag name lowercased, and its
      choices among the tag's Choice values.
    https://github.com/HumanSignal/label-studio (label_studio/tasks/), label-studio-sdk 2.1.
    """
    root = ET.fromstring(label_config)
    variables = {el.get("value")[1:]: el.tag for el in root.iter() if (el.get("value") or "").startswith("$")}
    controls = {el.get("name"): el for el in root.iter() if el.get("toName")}
    errors: list[str] = []
    if not isinstance(tasks, list) or not tasks:
        return ["tasks must be a non-empty list"]
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            errors.append(f"task {i}: no data dict")
            continue
        for var, tag in variables.items():
            value = task["data"].get(var)
            types = (str, int, float) if tag in ("Header", "Text") else (str,)
            if not isinstance(value, types):
                errors.append(f"task {i}: data.{var} missing or not {[t.__name__ for t in types]}")
        if not isinstance(task.get("annotations", []), list):
            errors.append(f"task {i}: annotations is not a list")
            continue
        for j, ann in enumerate(task.get("annotations", [])):
            where = f"task {i} annotation {j}"
            if not isinstance(ann, dict) or not isinstance(ann.get("result"), list):
                errors.append(f"{where}: no result list")
                continue
            who = ann.get("completed_by")
            if isinstance(who, dict):
                if who.get("email") not in members:
                    errors.append(f"{where}: unknown annotator's email {who.get('email')!r}")
            elif isinstance(who, bool) or not (who is None or (isinstance(who, int) and who in members.values())):
                errors.append(f"{where}: completed_by={who!r} is not a valid annotator's email or ID")
            for r in ann["result"]:
                ctl = controls.get(r.get("from_name"))
                if ctl is None or r.get("to_name") != ctl.get("toName") or r.get("type") != ctl.tag.lower():
                    errors.append(f"{where}: result {r.get('from_name')}->{r.get('to_name')} is not in the config")
                    continue
                allowed = {c.get("value") for c in ctl.iter("Choice")}
                if not set(r.get("value", {}).get("choices", [None])) <= allowed:
                    errors.append(f"{where}: choices {r['value']} not among {sorted(allowed)}")
    return errors


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    out = tmp_path_factory.mktemp("lsfx") / "out"
    write_quality_output(out, n_good=1, n_bad=1, clips_per_video=2, seed=3)
    return ClipIndex.open(out)


def labelled_store(path, keys) -> LabelStore:
    st = LabelStore(path)
    st.add(keys[0], "good", "ann", ts=1_700_000_000.0)          # mapped to a member by --annotator
    st.add(keys[0], "bad", "admin@example.org", ts=1_700_000_001.0)  # an email already
    st.add(keys[1], "bad", "labelstudio:7", ts=1_700_000_002.0)  # came from a Label Studio import
    st.add(keys[2], "skip", "bob", ts=1_700_000_003.0)           # nobody in Label Studio
    return st


def test_export_is_what_label_studio_imports(tmp_path, index):
    keys = list(index.clips)
    st = labelled_store(tmp_path / "l.sqlite", keys)
    path = tmp_path / "ls.json"
    assert export_labels(st, str(path), base_url="http://labels.example:8765/",
                         annotators=parse_annotators(["ann=ann@example.org"])) == 4
    tasks = json.loads(path.read_text())
    assert label_studio_import_errors(tasks, LABEL_CONFIG, MEMBERS) == []
    by = {(t["data"]["key"], a["labeller"]): a for t in tasks for a in t["annotations"]}
    assert by[keys[0], "ann"]["completed_by"] == {"email": "ann@example.org"}
    assert by[keys[0], "admin@example.org"]["completed_by"] == {"email": "admin@example.org"}
    assert by[keys[1], "labelstudio:7"]["completed_by"] == 7
    assert "completed_by" not in by[keys[2], "bob"]  # Label Studio credits the importing user
    assert by[keys[2], "bob"]["was_cancelled"] is True and by[keys[2], "bob"]["result"] == []
    for t in tasks:  # absolute URLs Label Studio's browser can load, naming the clip
        u = urlparse(t["data"]["video"])
        assert (u.scheme, u.netloc, u.path) == ("http", "labels.example:8765", f"/clip/{t['data']['key']}.mp4")
    # annotator ids work too, and a base URL with a path keeps it
    tasks = export_tasks(st.current_labels(), base_url="https://example.org/genie", annotators={"ann": 1})
    assert label_studio_import_errors(tasks, LABEL_CONFIG, MEMBERS) == []
    assert {a["completed_by"] for t in tasks for a in t["annotations"] if a["labeller"] == "ann"} == {1}
    assert tasks[0]["data"]["video"] == f"https://example.org/genie/clip/{tasks[0]['data']['key']}.mp4"
    # a labeller name as completed_by (what the export wrote before) is refused by Label Studio
    named = [{"data": tasks[0]["data"], "annotations": [{**tasks[0]["annotations"][0], "completed_by": "ann"}]}]
    assert label_studio_import_errors(named, LABEL_CONFIG, MEMBERS)


def test_without_a_base_url_clip_urls_stay_relative(tmp_path, index):
    keys = list(index.clips)
    tasks = export_tasks(labelled_store(tmp_path / "l.sqlite", keys).current_labels())
    assert {t["data"]["video"] for t in tasks} == {f"/clip/{k}.mp4" for k in keys[:3]}
    assert label_studio_import_errors(tasks, LABEL_CONFIG, MEMBERS) == []


def test_round_trip_keeps_every_labeller(tmp_path, index):
    keys = list(index.clips)
    st = labelled_store(tmp_path / "a.sqlite", keys)
    path = tmp_path / "ls.json"
    export_labels(st, str(path), base_url="http://h:1/", annotators={"ann": 7})
    st2 = LabelStore(tmp_path / "b.sqlite")
    assert import_labels(st2, index, str(path)) == 4
    strip = lambda rows: sorted((r["key"], r["labeller"], r["label"], r["ts"]) for r in rows)  # noqa: E731
    assert strip(st2.current_labels()) == strip(st.current_labels())
    # Label Studio's own export of the imported tasks: no `labeller`, completed_by an id
    tasks = json.loads(path.read_text())
    for t in tasks:
        for a in t["annotations"]:
            a.pop("labeller")
            a["completed_by"] = 7
    assert {e["labeller"] for e in parse_labelstudio(tasks, known=index.clips)} == {"labelstudio:7"}


def test_bad_export_options(tmp_path):
    st = LabelStore(tmp_path / "l.sqlite")
    st.add("k", "good", "ann")
    for bad in ("labels.example:8765", "ftp://h/", "/clip", "http://h/?token=x"):
        with pytest.raises(QualityError, match="base URL"):
            export_labels(st, str(tmp_path / "x.json"), base_url=bad)
    for bad in (["ann"], ["ann=bob"], ["=3"], ["ann=-1"]):
        with pytest.raises(QualityError, match="NAME=USER_ID or NAME=EMAIL"):
            parse_annotators(bad)
    with pytest.raises(QualityError, match=r"\(\.json\)"):
        export_labels(st, str(tmp_path / "x.parquet"), base_url="http://h/")
    assert not list(tmp_path.glob("x.*"))


def test_label_cli_export_flags(tmp_path, index, capsys):
    from genie_pipeline.cli import main

    keys = list(index.clips)
    db = tmp_path / "cli.sqlite"
    labelled_store(db, keys).close()
    label = ["label", str(index.root), "--set", f"filters.quality.labels_db={db}", "--export"]
    out = tmp_path / "e.json"
    assert main([*label, str(out), "--base-url", "http://h:8765", "--annotator", "ann=7"]) == 0
    tasks = json.loads(out.read_text())
    assert label_studio_import_errors(tasks, LABEL_CONFIG, MEMBERS) == []
    assert all(t["data"]["video"].startswith("http://h:8765/clip/") for t in tasks)
    capsys.readouterr()
    assert main([*label, str(out), "--annotator", "ann"]) == 2  # a QualityError: exit 2, one line
    assert "NAME=USER_ID" in capsys.readouterr().err
