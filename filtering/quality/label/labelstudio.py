"""Label Studio JSON: export our labels as Label Studio tasks, import Label Studio exports.

Export (Label Studio's "JSON" format, as its project import takes it): one task per clip
    {"id": 1, "data": {"video": "BASE/clip/KEY.mp4", "key": KEY, "title": ..., "source": ..., "video_id": ...},
     "annotations": [{"id": n, "completed_by": 7 | {"email": "ann@x.org"}, "labeller": "ann",
                      "created_at": ISO, "updated_at": ISO, "was_cancelled": false,
                      "result": [{"from_name": "quality", "to_name": "video", "type": "choices",
                                  "value": {"choices": ["good"]}, "origin": "manual"}]}]}
A skip is an annotation with `was_cancelled: true` and no result (Label Studio's own skip).
`LABEL_CONFIG` is the labelling interface to create the Label Studio project with.

Label Studio's import takes `completed_by` only as a member's integer id or {"email": ...} of a
member (a name fails the whole import; tasks/serializers.py `_insert_valid_completed_by`), and
credits an annotation without it to the user who imports. So: an `annotators` entry for the
labeller wins; a labeller that is an email address becomes {"email": ...}; one imported from
Label Studio ("labelstudio:7") becomes 7; any other name is left out of `completed_by`. Our
name is always kept in `labeller`, which Label Studio ignores and our import reads first, so
our round trip keeps every labeller. The clip URL is absolute with a base URL (where
`genie-pipeline label` serves /clip/KEY.mp4, as Label Studio's browser reaches it); without
one it stays "/clip/KEY.mp4", relative to our labelling server, which Label Studio cannot load.

Import accepts that format (`annotations`, or `completions` of old versions, `completed_by`
as a name, an id or {"email": ...}), and the "JSON_MIN" format (flat dicts with the choice
under the control's name, e.g. {"video": ..., "quality": "good", "annotator": 3}). The clip
key is `data.key`, else the video file name (with Label Studio's upload prefix `abcd1234-`
removed when the rest names a known clip).
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import PurePosixPath
from typing import Any, Iterable, Mapping
from urllib.parse import quote, unquote, urlparse

from genie_pipeline.filtering.quality.errors import QualityError

LABEL_CONFIG = """<View>
  <Video name="video" value="$video" muted="true"/>
  <Header value="$title"/>
  <Choices name="quality" toName="video" choice="single" showInline="true">
    <Choice value="good" hotkey="g"/>
    <Choice value="bad" hotkey="b"/>
  </Choices>
</View>"""


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _ts(v: Any) -> float | None:
    if v in (None, ""):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    try:
        d = dt.datetime.fromisoformat(str(v).replace("Z", "+00:00"))
    except ValueError:
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    return d.timestamp()


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def clip_url_prefix(base_url: str | None) -> str:
    """The prefix of exported clip URLs: "BASE/clip/" for an absolute http(s) base URL, "/clip/"
    (relative to our labelling server) without one."""
    if base_url is None:
        return "/clip/"
    u = urlparse(base_url)
    if u.scheme not in ("http", "https") or not u.netloc or u.query or u.fragment:
        raise QualityError(f"base URL {base_url!r} is not an absolute http(s)://host[:port][/path] URL")
    return base_url.rstrip("/") + "/clip/"


def parse_annotators(pairs: Iterable[str]) -> dict[str, int | str]:
    """{labeller: Label Studio user id or email} from "NAME=ID" / "NAME=EMAIL" strings."""
    out: dict[str, int | str] = {}
    for pair in pairs:
        name, sep, who = (x.strip() for x in pair.partition("="))
        if not sep or not name or not (who.isdigit() or _EMAIL.match(who)):
            raise QualityError(f"annotator {pair!r}: expected NAME=USER_ID or NAME=EMAIL of a Label Studio user")
        out[name] = int(who) if who.isdigit() else who
    return out


def completed_by(labeller: str, annotators: Mapping[str, int | str] | None = None) -> int | dict[str, str] | None:
    """`completed_by` as Label Studio's import takes it (an id or {"email"}), None when unknown."""
    who: Any = (annotators or {}).get(labeller, labeller)
    if isinstance(who, int):
        return who
    if _EMAIL.match(who):
        return {"email": who}
    m = re.fullmatch(r"labelstudio:(\d+)", who)
    return int(m.group(1)) if m else None


def export_tasks(events: list[dict[str, Any]], base_url: str | None = None,
                 annotators: Mapping[str, int | str] | None = None) -> list[dict[str, Any]]:
    """Label Studio tasks from current label rows (key, labeller, label, ts, video_id, source,
    title); clip URLs under `base_url`, labellers mapped to Label Studio users by `annotators`
    (see the module docstring for both)."""
    prefix = clip_url_prefix(base_url)
    tasks: dict[str, dict[str, Any]] = {}
    n = 0
    for e in events:
        key = e["key"]
        t = tasks.get(key)
        if t is None:
            t = tasks[key] = {"id": len(tasks) + 1, "data": {
                "video": prefix + quote(key) + ".mp4", "key": key, "title": e.get("title") or "",
                "source": e.get("source") or "", "video_id": e.get("video_id") or ""}, "annotations": []}
        n += 1
        skip = e["label"] == "skip"
        ann = {"id": n, "labeller": e["labeller"], "created_at": _iso(e.get("ts")),
               "updated_at": _iso(e.get("ts")), "was_cancelled": skip, "ground_truth": False,
               "result": [] if skip else [{"id": f"r{n}", "from_name": "quality", "to_name": "video",
                                           "type": "choices", "origin": "manual",
                                           "value": {"choices": [e["label"]]}}]}
        user = completed_by(e["labeller"], annotators)
        if user is not None:
            ann["completed_by"] = user
        t["annotations"].append(ann)
    return list(tasks.values())


def _labeller(v: Any) -> str:
    if isinstance(v, dict):
        v = v.get("email") or v.get("username") or v.get("id")
    return f"labelstudio:{v}" if isinstance(v, int) else str(v or "labelstudio")


def _key_from(data: dict[str, Any], known: set[str] | None) -> str | None:
    if isinstance(data.get("key"), str) and data["key"]:
        return data["key"]
    for field in ("video", "clip", "url", "path"):
        v = data.get(field)
        if isinstance(v, str) and v:
            name = PurePosixPath(unquote(urlparse(v).path)).name
            stem = name[:-4] if name.lower().endswith(".mp4") else name
            if known is None or stem in known:
                return stem
            m = re.match(r"^[0-9a-f]{8}-(.+)$", stem)  # Label Studio upload prefix
            if m and (known is None or m.group(1) in known):
                return m.group(1)
            return stem
    return None


def _choice(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    if isinstance(value, str) and value.strip().lower() in ("good", "bad"):
        return value.strip().lower()
    return None


def parse_labelstudio(data: Any, known: Iterable[str] | None = None, source: str = "input") -> list[dict[str, Any]]:
    """Label events (key, label, labeller, ts) from a Label Studio JSON or JSON_MIN export."""
    known_set = set(known) if known is not None else None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise QualityError(f"{source}: a Label Studio export is a JSON list of tasks")
    out = []
    for i, task in enumerate(data):
        if not isinstance(task, dict):
            raise QualityError(f"{source}: task {i} is not an object")
        anns = task.get("annotations", task.get("completions"))
        if anns is not None:  # full JSON export
            key = _key_from(task.get("data") or {}, known_set)
            if key is None:
                raise QualityError(f"{source}: task {task.get('id', i)} names no clip (data.key or data.video)")
            for a in anns:
                if a.get("was_cancelled"):
                    label = "skip"
                else:
                    labels = {c for r in a.get("result", []) if r.get("type") in ("choices", None)
                              for c in [_choice(r.get("value"))] if c}
                    if len(labels) != 1:
                        continue  # no good/bad choice in this annotation
                    label = labels.pop()
                labeller = a.get("labeller")  # ours, beside completed_by: see the module docstring
                out.append({"key": key, "label": label,
                            "labeller": labeller if isinstance(labeller, str) and labeller
                            else _labeller(a.get("completed_by")),
                            "ts": _ts(a.get("updated_at") or a.get("created_at"))})
        else:  # JSON_MIN: flat dict
            key = _key_from(task, known_set)
            choice = next((c for k, v in task.items() if k not in ("video", "key", "title")
                           for c in [_choice(v)] if c), None)
            if key is None or choice is None:
                continue
            out.append({"key": key, "label": choice, "labeller": _labeller(task.get("annotator")),
                        "ts": _ts(task.get("updated_at") or task.get("created_at"))})
    return out
