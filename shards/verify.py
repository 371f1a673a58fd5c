"""`genie-pipeline verify OUT`: every shard readable and every clip to spec; manifest ↔ shards agree."""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections import Counter

from genie_pipeline.shards import fs
from genie_pipeline.shards.finalize import JOURNAL, read_rows
from genie_pipeline.shards.writer import existing_shards, stats_name

REQUIRED_JSON = {"key": str, "video_key": str, "video_id": str, "source": str, "start_s": (int, float),
                 "fps": int, "n_frames": int, "width": int, "height": int, "split": str, "scores": dict}


def verify(out_dir: str, frames: int = 160, width: int = 160, height: int = 90, fps: int = 10,
           decode: bool = True) -> list[str]:
    """All problems found (empty: fine)."""
    from genie_pipeline.ingest.video import clip_fps, decode_clip

    problems: list[str] = []
    shard_dir = fs.join(out_dir, "shards")
    if fs.exists(fs.join(out_dir, JOURNAL)):
        problems.append(f"{JOURNAL}: an interrupted commit is pending (re-run ingest to finish it)")
    for name in ("manifest", "videos", "failures", "candidates"):
        if not fs.exists(fs.join(out_dir, f"{name}.parquet")):
            problems.append(f"{name}.parquet is missing")
    manifest = read_rows(out_dir, "manifest")
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
    for split in ("train", "val"):
        for path in existing_shards(shard_dir, split):
            name = os.path.basename(path)
            found_shards.add(name)
            keys = _check_shard(path, name, split, problems, frames, width, height, fps, decode, decode_clip, clip_fps)
            seen_keys.update(keys)
            if set(keys) != expected.get(name, set()):
                missing = expected.get(name, set()) - set(keys)
                extra = set(keys) - expected.get(name, set())
                problems.append(f"{name}: differs from manifest ({len(missing)} missing, {len(extra)} not in manifest)")
            sp = fs.join(shard_dir, stats_name(name))
            if not fs.exists(sp):
                problems.append(f"{name}: no stats file")
            elif json.loads(fs.read_bytes(sp)).get("n_samples") != len(keys):
                problems.append(f"{name}: stats n_samples disagrees with the tar")
    for name in set(expected) - found_shards:
        problems.append(f"manifest names shard {name}, which does not exist")
    dups = [k for k, n in seen_keys.items() if n > 1]
    if dups:
        problems.append(f"{len(dups)} clip key(s) in more than one shard, e.g. {dups[0]}")
    return problems


def _check_shard(path, name, split, problems, frames, width, height, fps, decode, decode_clip, clip_fps) -> list[str]:
    try:
        with tarfile.open(fileobj=io.BytesIO(fs.read_bytes(path)), mode="r") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{name}: not a readable tar ({e})")
        return []
    samples: dict[str, dict[str, bytes]] = {}
    for member, data in files.items():
        key, _, ext = member.partition(".")
        samples.setdefault(key, {})[ext] = data
    for key, parts in samples.items():
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
        if decode:
            try:
                arr = decode_clip(parts["mp4"])
                if arr.shape != (frames, height, width, 3):
                    problems.append(f"{where}: decodes to {arr.shape}, expected {(frames, height, width, 3)}")
                elif abs(clip_fps(parts["mp4"]) - fps) > 1e-3:
                    problems.append(f"{where}: {clip_fps(parts['mp4'])} fps, expected {fps}")
            except Exception as e:
                problems.append(f"{where}: mp4 does not decode ({type(e).__name__}: {e})")
    return list(samples)
