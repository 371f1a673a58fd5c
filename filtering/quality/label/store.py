"""The label database: SQLite in WAL mode, one append-only row per labelling action.

- `events` keeps every action (good / bad / skip) with labeller and time; undo marks the
  labeller's latest action undone instead of deleting it. A clip's label for a labeller is
  their latest action that is not undone.
- Each action is its own transaction (synchronous=FULL): once the page has its answer the
  label is on disk, whatever happens to the server afterwards.
- `clips` holds what is known about each clip (video, source, title) and `sample` the
  labelling order, so a restarted server shows the same sample.
- Each event records the browser session that gave it (a digest of the page's session
  cookie), so a labeller can undo only what they did themselves.
- Writes go through one connection, one at a time (a lock, not SQLite's busy-wait); reads
  use one connection per thread, which WAL lets run beside the writer.
- The current labels and the progress counts are kept in memory (`Tally`), updated with
  each action instead of rescanning the events. The events stay the source of truth: the
  tally is built from them on first use, and again whenever another connection (an
  import, another process) has written, which `PRAGMA data_version` on the writing
  connection reveals (its own commits do not change it).
"""
from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections import Counter
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
    origin TEXT NOT NULL DEFAULT 'web',
    session TEXT NOT NULL DEFAULT '');
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


def session_digest(session: str) -> str:
    """What the events keep of a session cookie: enough to match it, not to replay it."""
    return hashlib.sha256(session.encode()).hexdigest()[:32]


class Tally:
    """The current labels and the progress counts, updated one action at a time.

    The counts are those of `labels.label_counts` over the same labels (a clip counts as
    labelled when someone gave it good or bad, and as good or bad by the majority; a test
    holds the two to the same numbers)."""

    def __init__(self, rows: Iterable[Any] = ()):
        self.by_key: dict[str, dict[str, str]] = {}  # clip -> {labeller: label}
        self.by_labeller: dict[str, dict[str, str]] = {}  # labeller -> {clip: label}
        self.totals = Counter()
        for r in rows:
            self.set(r["key"], r["labeller"], r["label"])

    @staticmethod
    def _part(votes: dict[str, str]) -> Counter:
        """What one clip adds to the totals."""
        good, bad = sum(v == "good" for v in votes.values()), sum(v == "bad" for v in votes.values())
        if good or bad:
            return Counter(labelled=1, good=int(good > bad), bad=int(bad > good))
        return Counter(skipped=int(bool(votes)))

    def set(self, key: str, labeller: str, label: str | None) -> None:
        """`labeller`'s current label of `key` is now `label` (None: they have none)."""
        votes = self.by_key.setdefault(key, {})
        self.totals.subtract(self._part(votes))
        mine = self.by_labeller.setdefault(labeller, {})
        if label is None:
            votes.pop(labeller, None)
            mine.pop(key, None)
        else:
            votes[labeller] = mine[key] = label
        self.totals.update(self._part(votes))
        if not votes:
            del self.by_key[key]
        if not mine:
            del self.by_labeller[labeller]

    def counts(self, labeller: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {k: self.totals[k] for k in ("labelled", "good", "bad", "skipped")}
        out["labellers"] = sorted(self.by_labeller)
        if labeller is not None:
            mine = Counter(self.by_labeller.get(labeller, {}).values())
            out["mine"] = {lab: mine[lab] for lab in VALID}
        return out

    def others(self, labeller: str) -> list[str]:
        """Clips someone other than `labeller` labelled good or bad."""
        return sorted(k for k, votes in self.by_key.items()
                      if any(who != labeller and v != "skip" for who, v in votes.items()))


class LabelStore:
    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = str(path)
        self.readonly = readonly
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._wlock = threading.RLock()  # the writing connection and the tally
        self._tally: Tally | None = None
        self._version = -1
        self._writer = self._connect()
        if not readonly:
            self._writer.executescript(SCHEMA)
            if "session" not in {r[1] for r in self._writer.execute("PRAGMA table_info(events)")}:
                self._writer.execute("ALTER TABLE events ADD COLUMN session TEXT NOT NULL DEFAULT ''")
        else:
            self._writer.execute("SELECT count(*) FROM events").fetchone()  # fails clearly on a foreign file

    # --------------------------------------------------------------------- connections
    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30,
                                  isolation_level=None, check_same_thread=False)
        else:
            con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA busy_timeout=30000")
        con.row_factory = sqlite3.Row
        with self._lock:
            self._all.append(con)
        return con

    def _con(self) -> sqlite3.Connection:
        """This thread's connection for reading."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
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

    def _write(self, fn, then=None):
        """fn(connection) in one transaction; then(fn's result) on the tally once committed,
        under the same lock, so the tally sees actions in the order the database does."""
        with self._wlock:
            con = self._writer
            con.execute("BEGIN IMMEDIATE")
            try:
                out = fn(con)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            if then is not None and self._tally is not None:
                then(out)
            return out

    def _current(self) -> Tally:
        """The tally, rebuilt from the events when another connection has written (call
        with the write lock held)."""
        version = self._writer.execute("PRAGMA data_version").fetchone()[0]
        if self._tally is None or version != self._version:
            self._tally = Tally(self._writer.execute(CURRENT))
            self._version = version
        return self._tally

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
    def add(self, key: str, label: str, labeller: str, ts: float | None = None, origin: str = "web",
            session: str = "") -> int:
        """Record an action; `session` is the browser session that gave it (see `undo`)."""
        if label not in VALID:
            raise ValueError(f"label must be one of {VALID}, not {label!r}")
        if not labeller or len(labeller) > 100:
            raise ValueError("labeller name must be 1-100 characters")
        ts = time.time() if ts is None else ts
        return self._write(lambda c: c.execute(
            "INSERT INTO events (key, labeller, label, ts, origin, session) VALUES (?, ?, ?, ?, ?, ?)",
            (key, labeller, label, ts, origin, session_digest(session) if session else "")).lastrowid,
            lambda _: self._tally.set(key, labeller, label))

    def add_many(self, events: list[dict[str, Any]], origin: str) -> int:
        """Import events; returns how many changed a label. An event already present (same
        clip, labeller, label, time) is skipped, and so is one that gives the label the
        labeller's latest label of that clip already is (a re-import of our own export, whose
        times are rounded, adds nothing)."""
        def fn(con):
            n = 0
            for e in events:
                if e["label"] not in VALID:
                    raise ValueError(f"label must be one of {VALID}, not {e['label']!r}")
                ts = float(e.get("ts") or time.time())
                dup = con.execute("SELECT 1 FROM events WHERE key=? AND labeller=? AND label=? AND ts=?",
                                  (e["key"], e["labeller"], e["label"], ts)).fetchone()
                latest = con.execute("SELECT label FROM events WHERE key=? AND labeller=? AND undone=0 "
                                     "ORDER BY ts DESC, id DESC LIMIT 1", (e["key"], e["labeller"])).fetchone()
                if not dup and not (latest and latest[0] == e["label"]):
                    con.execute("INSERT INTO events (key, labeller, label, ts, origin) VALUES (?, ?, ?, ?, ?)",
                                (e["key"], e["labeller"], e["label"], ts, origin))
                    n += 1
            return n

        def forget(_):  # an import may add old events under newer ones: rebuild on next use
            self._tally = None
        return self._write(fn, forget)

    def undo(self, labeller: str, session: str | None = None) -> dict[str, Any] | None:
        """Undo the labeller's latest action; returns it (key, label) or None. With `session`,
        their latest action given in that session: PermissionError when all the labeller's
        actions left were given in other sessions (one browser cannot undo another's labels)."""
        def fn(con):
            q, args = "SELECT id, key, label FROM events WHERE labeller = ? AND undone = 0", [labeller]
            if session is not None:
                q, args = q + " AND session = ?", [labeller, session_digest(session)]
            r = con.execute(q + " ORDER BY id DESC LIMIT 1", args).fetchone()
            if r is None:
                if session is not None and con.execute(
                        "SELECT 1 FROM events WHERE labeller = ? AND undone = 0 LIMIT 1", (labeller,)).fetchone():
                    raise PermissionError(f"the labels of {labeller!r} were given in another browser session: "
                                          "only that session can undo them")
                return None
            con.execute("UPDATE events SET undone = 1 WHERE id = ?", (r["id"],))
            before = con.execute("SELECT label FROM events WHERE key = ? AND labeller = ? AND undone = 0 "
                                 "ORDER BY id DESC LIMIT 1", (r["key"], labeller)).fetchone()
            return {"key": r["key"], "label": r["label"]}, before["label"] if before else None

        def then(out):
            if out is not None:
                self._tally.set(out[0]["key"], labeller, out[1])
        out = self._write(fn, then)
        return out[0] if out else None

    # ---------------------------------------------------------------- current labels
    def counts(self, labeller: str | None = None) -> dict[str, Any]:
        """Progress counts, as `labels.label_counts(self.current_labels(), labeller)`."""
        with self._wlock:
            return self._current().counts(labeller)

    def labels_of(self, labeller: str) -> dict[str, str]:
        """The labeller's current label per clip."""
        with self._wlock:
            return dict(self._current().by_labeller.get(labeller, {}))

    def label_of(self, key: str, labeller: str) -> str | None:
        with self._wlock:
            return self._current().by_key.get(key, {}).get(labeller)

    def others(self, labeller: str) -> list[str]:
        """Clips another labeller has labelled good or bad."""
        with self._wlock:
            return self._current().others(labeller)

    def current_labels(self, labeller: str | None = None) -> list[dict[str, Any]]:
        """Each (clip, labeller)'s current label, with the clip's video and title when known
        (read from the events: what exports and training use)."""
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
