"""Triggers: a command run when an output gets a new snapshot.

- `ingest --on-commit CMD` (or `output.on_commit`): after the ingest's commit, in its launcher;
- `watch OUT --every 10m --then CMD`: polls OUT/_snapshots/LATEST (local or bucket) and runs CMD
  once per new snapshot it sees, for a detached or Dataflow ingest whose launcher is gone.

CMD is the user's own command line, split as a shell would (`shlex`) and run without a shell;
nothing from the data (titles, paths, ids) is put into it: the snapshot, the output and the
counts reach it as environment variables (`hook_env`). A failing command is reported; it
never undoes a commit.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from typing import Callable

from genie_pipeline.shards import snapshots

_EVERY = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d)?$")


def parse_every(text: str) -> float:
    """`30s`, `10m`, `1h`, `1d` or plain seconds -> seconds; ValueError names what was wrong."""
    m = _EVERY.match(text.strip().lower())
    if not m or float(m.group(1)) <= 0:
        raise ValueError(f"{text!r} is not an interval like 30s, 10m, 1h or 1d")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2) or "s"]


def hook_env(out: str, record: dict | None, new: bool) -> dict[str, str]:
    """What a hook's environment adds: GENIE_OUTPUT, GENIE_SNAPSHOT (the pinned input is
    `$GENIE_OUTPUT@$GENIE_SNAPSHOT`), GENIE_SNAPSHOT_NEW (1 where the commit made a new
    version), GENIE_PARENT and one GENIE_<COUNT> per count of the snapshot."""
    env = {"GENIE_OUTPUT": out, "GENIE_SNAPSHOT": (record or {}).get("id") or "",
           "GENIE_SNAPSHOT_NEW": "1" if new else "0", "GENIE_PARENT": (record or {}).get("parent") or ""}
    for k, v in ((record or {}).get("counts") or {}).items():
        env[f"GENIE_{k.upper()}"] = "" if v is None else str(v)
    return env


def run_hook(cmd: str, out: str, record: dict | None, new: bool = True) -> int:
    """Run `cmd` (no shell) with `hook_env` added; its exit status (127: it could not start)."""
    env = {**os.environ, **hook_env(out, record, new)}
    try:
        return subprocess.run(shlex.split(cmd), env=env).returncode
    except OSError as e:
        print(f"genie-pipeline: hook {cmd!r} could not start: {e}", file=sys.stderr)
        return 127


def watch(out: str, every_s: float, cmd: str, after: str | None, max_runs: int | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll `out` every `every_s` seconds and run `cmd` once per new LATEST (snapshots committed
    between two polls trigger once, for the newest). `after`: the id already handled (None:
    every snapshot found counts as new, the one there now included). Stops after `max_runs`
    commands (None: never); returns 1 where the last command failed, else 0. A poll that
    cannot read the output is reported and retried at the next one."""
    runs, last_rc = 0, 0
    while max_runs is None or runs < max_runs:
        try:
            latest = snapshots.latest_id(out)
            record = snapshots.read(out, latest) if latest and latest != after else None
        except Exception as e:  # noqa: BLE001 — a store hiccup: try again at the next poll
            print(f"watch {out}: cannot read its snapshots now ({type(e).__name__}: {e})", file=sys.stderr)
            record = None
        if record is not None:
            print(f"watch {out}: new snapshot {record['id']} ({record.get('kind')}, "
                  f"{(record.get('counts') or {}).get('clips_kept')} clips kept): running {cmd}",
                  file=sys.stderr, flush=True)
            last_rc = run_hook(cmd, out, record)
            if last_rc:
                print(f"watch {out}: the command failed (exit {last_rc}) for snapshot {record['id']}; "
                      "watching on", file=sys.stderr, flush=True)
            after, runs = record["id"], runs + 1
            continue
        sleep(every_s)
    return 1 if last_rc else 0
