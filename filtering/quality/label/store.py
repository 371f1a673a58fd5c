"""The label database: SQLite in WAL mode, one append-only row per labelling action.

- `events` keeps every action (good / bad / skip) with labeller and time; undo marks the
  labeller's latest action undone instead of deleting it. A clip's label for a labeller is
  their latest action that is not undone.
- Each action is its own transaction (synchronous=FULL): once the page has its answer the
  label is on disk, whatever happens to the server afterwards.
- `clips` holds what is known about each clip (video, source, title) and `sample` the
  labelling order, so a restarted server shows the same sample.
- One connection per thread (the server is threaded); WAL lets readers and one writer work
  at once, and busy_timeout lets several labellers' writes queue instead of failing.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from genie_pipeline.shards.reader import ClipInfo

VALID = ("good", "bad", "skip")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clips (
    key TEXT PRIMARY KEY, video_id TEXT NOT NULL, video_key TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL DEFAULT '', title TEXT NOT NULL DEFAULT '', stratum TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS sample (pos INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE REFERENCES clips(key));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    labeller TEXT NOT NULL,
    label TEXT NOT NULL CHECK (label IN ('good', 'bad', 'skip')),
    ts REAL NOT NULL,
    undone INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT 'web');
CREATE INDEX IF NOT EXISTS events_key ON events (key, labeller);
CREATE INDEX IF NOT EXISTS events_labeller ON events (labeller, undone, id);
"""

# the latest action per (clip, labeller) that is not undone
CURRENT = """
SELECT e.id, e.key, e.labeller, e.label, e.ts, e.origin FROM events e
JOIN (SELECT key, labeller, MAX(id) AS id FROM events WHERE undone = 0 GROUP BY key, labeller) m
  ON e.id = m.id
"""


def open_label_store(path: str | Path) -> LabelStore:
    """The label database at `path`, created (with its folder) when missing."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return LabelStore(path)


class LabelStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        con = self._con()
        if not readonly:
            con.executescript(SCHEMA)
        else:
            con.execute("SELECT count(*) FROM events").fetchone()  # fails clearly on a foreign file

    # --------------------------------------------------------------------- connections
    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            if self.readonly:
                con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                      isolation_level=None, check_same_thread=False)
            else:
                con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
                con.execute("PRAGMA journal_mode=WAL")
                con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            con.row_factory = sqlite3.Row
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            for con in self._all:
                try:
                    con.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write(self, fn):
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            out = fn(con)
            con.execute("COMMIT")
            return out
        except BaseException:
            con.execute("ROLLBACK")
            raise

    # ----------------------------------------------------------------------- metadata
    def get_meta(self, k: str, default: str | None = None) -> str | None:
        r = self._con().execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return r[0] if r else default

    def set_meta(self, k: str, v: str) -> None:
        self._write(lambda c: c.execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", (k, v)))

    # ---------------------------------------------------------------- clips / sample
    def upsert_clips(self, clips: Iterable[ClipInfo]) -> None:
        rows = [(c.key, str(c.video_id), c.video_key, c.source, c.title, c.stratum) for c in clips]
        self._write(lambda con: con.executemany(
            "INSERT INTO clips (key, video_id, video_key, source, title, stratum) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET video_id=excluded.video_id, video_key=excluded.video_key, "
            "source=excluded.source, title=excluded.title, stratum=excluded.stratum", rows))

    def set_sample(self, keys: list[str]) -> None:
        def fn(con):
            con.execute("DELETE FROM sample")
            con.executemany("INSERT INTO sample (pos, key) VALUES (?, ?)", list(enumerate(keys)))
        self._write(fn)

    def sample(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._con().execute(
            "SELECT s.pos, c.key, c.video_id, c.video_key, c.source, c.title, c.stratum "
            "FROM sample s JOIN clips c ON c.key = s.key ORDER BY s.pos")]

    # -------------------------------------------------------------------------- labels
    def add(self, key: str, label: str, labeller: str, ts: float | None = None, origin: str = "web") -> int:
        if label not in VALID:
            raise ValueError(f"label must be one of {VALID}, not {label!r}")
        if not labeller or len(labeller) > 100:
            raise ValueError("labeller name must be 1-100 characters")
        ts = time.time() if ts is None else ts
        return self._write(lambda c: c.execute(
            "INSERT INTO events (key, labeller, label, ts, origin) VALUES (?, ?, ?, ?, ?)",
            (key, labeller, label, ts, origin)).lastrowid)

    def add_many(self, events: list[dict[str, Any]], origin: str) -> int:
        """Import events; an event already present (same clip, labeller, label, time) is skipped."""
        def fn(con):
            n = 0
            for e in events:
                if e["label"] not in VALID:
                    raise ValueError(f"label must be one of {VALID}, not {e['label']!r}")
                ts = float(e.get("ts") or time.time())
                dup = con.execute("SELECT 1 FROM events WHERE key=? AND labeller=? AND label=? AND ts=?",
                                  (e["key"], e["labeller"], e["label"], ts)).fetchone()
                if not dup:
                    con.execute("INSERT INTO events (key, labeller, label, ts, origin) VALUES (?, ?, ?, ?, ?)",
                                (e["key"], e["labeller"], e["label"], ts, origin))
                    n += 1
            return n
        return self._write(fn)

    def undo(self, labeller: str) -> dict[str, Any] | None:
        """Undo the labeller's latest action; returns it (key, label) or None."""
        def fn(con):
            r = con.execute("SELECT id, key, label FROM events WHERE labeller = ? AND undone = 0 "
                            "ORDER BY id DESC LIMIT 1", (labeller,)).fetchone()
            if r is None:
                return None
            con.execute("UPDATE events SET undone = 1 WHERE id = ?", (r["id"],))
            return {"key": r["key"], "label": r["label"]}
        return self._write(fn)

    def current_labels(self, labeller: str | None = None) -> list[dict[str, Any]]:
        """Each (clip, labeller)'s current label, with the clip's video and title when known."""
        q = (f"SELECT cur.key, cur.labeller, cur.label, cur.ts, cur.origin, c.video_id, c.video_key, "
             f"c.source, c.title FROM ({CURRENT}) cur LEFT JOIN clips c ON c.key = cur.key")
        args: tuple = ()
        if labeller is not None:
            q += " WHERE cur.labeller = ?"
            args = (labeller,)
        q += " ORDER BY cur.id"
        out = []
        for r in self._con().execute(q, args):
            d = dict(r)
            d["labelled_at"] = d["ts"]
            out.append(d)
        return out
