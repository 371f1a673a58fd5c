"""`genie-pipeline verify OUT`: every shard's bytes match the sha256 recorded when it was
written (its LATEST snapshot's, else its stats file's: bit rot, a truncated copy, a tar edited
in place), every shard readable and every clip to spec (`decode`: each clip decoded);
manifest ↔ shards agree."""
from __future__ import annotations

import json
import os
from collections import Counter

from genie_pipeline.shards import fs, snapshots
from genie_pipeline.shards.clip import ClipSpec, check_clip
from genie_pipeline.shards.commit import JOURNAL
from genie_pipeline.shards.reader import (SPLITS, TAR_ERRORS, DataError, ShardChanged, has_table, iter_tar_samples,
                                          live_shards, read_rows, read_spec, stats_name)
from genie_pipeline.shards.records import TABLES

REQUIRED_JSON = {"key": str, "video_key": str, "video_id": str, "source": str, "start_s": (int, float),
                 "fps": int, "n_frames": int, "width": int, "height": int, "split": str, "scores": dict}


def verify(out_dir: str, spec: ClipSpec | None = None, decode: bool = True) -> list[str]:
    """All problems found (empty: fine). Clips are checked against the spec the output
    recorded in stats.json; `spec` serves an output that recorded none."""
    problems: list[str] = []
    spec = read_spec(out_dir) or spec
    if spec is None and decode:
        problems.append("stats.json records no clip_spec: clips cannot be checked (give the config)")
        decode = False
    shard_dir = fs.join(out_dir, "shards")
    if fs.exists(fs.join(out_dir, JOURNAL)):
        problems.append(f"{JOURNAL}: an interrupted commit is pending (re-run ingest to finish it)")
    for name in TABLES:
        if not has_table(out_dir, name):
            problems.append(f"table {name} is missing (no {name}/ part files)")
    try:
        manifest = read_rows(out_dir, "manifest")
    except DataError as e:  # a damaged part is a problem found (exit 1), not a usage error
        return problems + [f"manifest: {e}"]
    expected: dict[str, set[str]] = {}
    for r in manifest:
        if r["kept"]:
            if not r["shard"]:
                problems.append(f"manifest: kept clip {r['key']} names no shard")
            else:
                expected.setdefault(r["shard"], set()).add(r["key"])
        elif r["shard"]:
            problems.append(f"manifest: rejected clip {r['key']} is in shard {r['shard']}")
    dup = [k for k, n in Counter(r["key"] for r in manifest).items() if n > 1]
    if dup:
        problems.append(f"manifest: {len(dup)} duplicate clip key(s), e.g. {dup[0]}")

    seen_keys: Counter = Counter()
    found_shards = set()
    pinned = _latest_hashes(out_dir)
    for split in SPLITS:
        for path in live_shards(shard_dir, split):  # shards kept for older snapshots are not checked
            name = os.path.basename(path)
            found_shards.add(name)
            sp = fs.join(shard_dir, stats_name(name))
            stats = json.loads(fs.read_bytes(sp)) if fs.exists(sp) else None
            # an output without snapshots still has each shard's sha256 in its stats file: a
            # flipped byte inside an mp4 often still decodes, only the hash sees it
            keys = _check_shard(path, name, split, problems, spec if decode else None,
                                pinned.get(name) or (stats or {}).get("sha256"))
            seen_keys.update(keys)
            if set(keys) != expected.get(name, set()):
                missing = expected.get(name, set()) - set(keys)
                extra = set(keys) - expected.get(name, set())
                problems.append(f"{name}: differs from manifest ({len(missing)} missing, {len(extra)} not in manifest)")
            if stats is None:
                problems.append(f"{name}: no stats file")
            elif stats.get("n_samples") != len(keys):
                problems.append(f"{name}: stats n_samples disagrees with the tar")
    for name in set(expected) - found_shards:
        problems.append(f"manifest names shard {name}, which does not exist")
    dups = [k for k, n in seen_keys.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} clip key(s) in more than one shard, e.g. {dups[0]}")
    return problems


def _latest_hashes(out_dir: str) -> dict[str, str]:
    """{shard name: sha256} as the LATEST snapshot records them ({}: no snapshot)."""
    try:
        record = snapshots.read(out_dir) if snapshots.latest_id(out_dir) else {}
    except snapshots.SnapshotError:
        return {}
    return {os.path.basename(e["shard"]): e["sha256"] for es in record.get("splits", {}).values() for e in es
            if e.get("sha256")}


def _check_shard(path: str, name: str, split: str, problems: list[str], spec: ClipSpec | None,
                 sha256: str | None = None) -> list[str]:
    """The keys in one shard; what is wrong is appended to `problems` (clips decoded and
    checked against `spec` unless it is None; its bytes against `sha256`, the snapshot's)."""
    samples = []
    try:
        for sample in iter_tar_samples(path, sha256):
            samples.append(sample)
    except ShardChanged as e:  # read whole: its samples are checked too
        problems.append(f"{name}: changed since it was written: its sha256 differs from the one recorded then ({e})")
    except TAR_ERRORS as e:
        problems.append(f"{name}: not a readable tar ({e})")
        return []
    for key, parts in samples:
        where = f"{name}:{key}"
        if set(parts) != {"mp4", "json"}:
            problems.append(f"{where}: has {sorted(parts)}, expected mp4 and json")
            continue
        try:
            meta = json.loads(parts["json"])
        except json.JSONDecodeError as e:
            problems.append(f"{where}: json does not parse ({e})")
            continue
        for field, typ in REQUIRED_JSON.items():
            if not isinstance(meta.get(field), typ):
                problems.append(f"{where}: json field {field!r} missing or not {typ}")
        if meta.get("key") != key or meta.get("split") != split:
            problems.append(f"{where}: json key/split disagree with the tar ({meta.get('key')}, {meta.get('split')})")
        if spec is not None:
            wrong = check_clip(parts["mp4"], spec)
            if wrong:
                problems.append(f"{where}: {wrong}")
    return [key for key, _ in samples]
