"""SQLite storage of survey responses: every answer committed the moment it is given.

One short-lived connection per call (safe from Streamlit's threads and from several server
processes), WAL journal with `synchronous=FULL` (a committed answer survives a crash or power
loss), a 30 s busy timeout (writers queue instead of failing), and primary keys that make
a repeated answer a no-op: the first answer to a pair wins, so a double-click or a resent
request never creates a duplicate. Keep the file on a local disk (WAL needs shared memory).

The admin login's failed attempts are stored here too, so its lockout holds across browser
sessions, server processes and restarts (see `admin_login`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

from echosynth.gen.core.io import atomic_path

# Crockford-like alphabet without look-alikes (0/O, 1/I/L, U): 12 symbols ≈ 59 bits.
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_GROUPS, CODE_GROUP_LEN = 3, 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    code        TEXT PRIMARY KEY,
    survey_id   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    pair_order  TEXT NOT NULL,   -- JSON list of pair ids in this participant's order
    sides       TEXT NOT NULL,   -- JSON {pair id: [image on the left, image on the right]}
    before_at   TEXT,            -- when the questions before were answered
    after_at    TEXT             -- when the questions after were answered (= finished)
);
CREATE TABLE IF NOT EXISTS questions (
    code        TEXT NOT NULL REFERENCES participants(code),
    phase       TEXT NOT NULL CHECK (phase IN ('before', 'after')),
    question    TEXT NOT NULL,
    answer      TEXT,
    answered_at TEXT NOT NULL,
    PRIMARY KEY (code, phase, question)
);
CREATE TABLE IF NOT EXISTS answers (
    code         TEXT NOT NULL REFERENCES participants(code),
    pair_id      TEXT NOT NULL,
    position     INTEGER NOT NULL,  -- 1-based place in this participant's order
    left_image   TEXT NOT NULL,
    right_image  TEXT NOT NULL,
    choice       TEXT NOT NULL CHECK (choice IN ('left', 'right')),
    chosen_image TEXT NOT NULL,
    confidence   INTEGER,           -- optional per-pair confidence (1 guess .. 3 sure)
    response_ms  INTEGER,           -- from showing the pair to the answer reaching the server
    answered_at  TEXT NOT NULL,
    PRIMARY KEY (code, pair_id)
);
CREATE TABLE IF NOT EXISTS admin_attempts (
    at      TEXT NOT NULL,             -- UTC time of the attempt
    outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'failed', 'locked'))
);
"""

# Admin lockout: after LOCK_AFTER failed logins (since the last successful one, within
# LOCK_WINDOW) the login is refused for LOCK_BASE, doubling with each further failure up to
# LOCK_MAX. Attempts during a lock are logged as 'locked' but not checked and not counted,
# so a locked-out guesser learns nothing and cannot extend the lock without bound.
LOCK_AFTER = 5
LOCK_WINDOW = timedelta(hours=24)
LOCK_BASE = timedelta(minutes=1)
LOCK_MAX = timedelta(hours=24)
# Spreadsheet programs run a cell starting with one of these as a formula (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def now() -> str:
    """UTC timestamp with milliseconds, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def lock_duration(failures: int) -> timedelta:
    """How long the admin login stays locked after `failures` failures in a row (0 below LOCK_AFTER)."""
    if failures < LOCK_AFTER:
        return timedelta(0)
    return min(LOCK_BASE * 2 ** min(failures - LOCK_AFTER, 20), LOCK_MAX)


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text cells starting with = + - @ tab or CR get a leading ' (no spreadsheet formulas)."""
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = [("'" + v) if isinstance(v, str) and v.startswith(_FORMULA_START) else v for v in out[col]]
    return out


def new_code() -> str:
    """A random, unguessable participant code such as `K7QM-3XTA-PZ9W` (from `secrets`)."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_GROUPS * CODE_GROUP_LEN))
    return "-".join(chars[i:i + CODE_GROUP_LEN] for i in range(0, len(chars), CODE_GROUP_LEN))


def normalize_code(text: str) -> str:
    """Accept a code typed in any case, with spaces or without dashes; '' if it cannot be one."""
    chars = "".join(c for c in str(text).upper() if c.isalnum())
    if len(chars) != CODE_GROUPS * CODE_GROUP_LEN or any(c not in CODE_ALPHABET for c in chars):
        return ""
    return "-".join(chars[i:i + CODE_GROUP_LEN] for i in range(0, len(chars), CODE_GROUP_LEN))


@dataclass(frozen=True)
class Participant:
    """A participant's fixed randomisation and progress markers."""

    code: str
    created_at: str
    pair_order: tuple[str, ...]
    sides: dict[str, list[str]]
    before_at: str | None
    after_at: str | None


class SurveyStore:
    """Responses of one survey in one SQLite file."""

    def __init__(self, path: str | Path, survey_id: str = ""):
        self.path = Path(path)
        self.survey_id = survey_id
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            con.execute("PRAGMA busy_timeout=30000")
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlocks
            try:
                yield con
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------------------------------
    # Participants

    def create_participant(self, pair_ids: list[str], pair_images: dict[str, tuple[str, str]]) -> Participant:
        """Register a new participant with a fresh code, random pair order and random sides."""
        rng = secrets.SystemRandom()
        order = list(pair_ids)
        rng.shuffle(order)
        sides = {p: list(pair_images[p]) if rng.random() < 0.5 else list(pair_images[p])[::-1] for p in order}
        for _ in range(10):
            code = new_code()
            try:
                with self._transaction() as con:
                    con.execute("INSERT INTO participants (code, survey_id, created_at, pair_order, sides) "
                                "VALUES (?, ?, ?, ?, ?)", (code, self.survey_id, now(), json.dumps(order), json.dumps(sides)))
            except sqlite3.IntegrityError:
                continue  # a code collision (≈ never): draw again
            return self.participant(code)
        raise RuntimeError(f"{self.path}: could not draw an unused participant code")

    def participant(self, code: str) -> Participant | None:
        """The participant with this code, or None."""
        with self._connect() as con:
            row = con.execute("SELECT code, created_at, pair_order, sides, before_at, after_at "
                              "FROM participants WHERE code = ?", (code,)).fetchone()
        if row is None:
            return None
        return Participant(row[0], row[1], tuple(json.loads(row[2])), json.loads(row[3]), row[4], row[5])

    # ------------------------------------------------------------------------------------------
    # Answers

    def save_questions(self, code: str, phase: str, answers: dict[str, object]) -> bool:
        """Store the before/after questionnaire in one transaction; False if already stored."""
        column = {"before": "before_at", "after": "after_at"}[phase]
        with self._transaction() as con:
            done = con.execute(f"SELECT {column} FROM participants WHERE code = ?", (code,)).fetchone()
            if done is None:
                raise KeyError(f"no participant {code}")
            if done[0] is not None:
                return False
            t = now()
            con.executemany("INSERT OR IGNORE INTO questions (code, phase, question, answer, answered_at) "
                            "VALUES (?, ?, ?, ?, ?)",
                            [(code, phase, q, None if a is None else str(a), t) for q, a in answers.items()])
            con.execute(f"UPDATE participants SET {column} = ? WHERE code = ?", (t, code))
        return True

    def questions(self, code: str, phase: str) -> dict[str, str | None]:
        """One participant's before or after answers."""
        with self._connect() as con:
            rows = con.execute("SELECT question, answer FROM questions WHERE code = ? AND phase = ?", (code, phase)).fetchall()
        return dict(rows)

    def record_answer(self, code: str, pair_id: str, choice: str, confidence: int | None = None,
                      response_ms: int | None = None) -> bool:
        """Commit one pair answer; False (and nothing changed) if this pair was already answered."""
        p = self.participant(code)
        if p is None:
            raise KeyError(f"no participant {code}")
        if pair_id not in p.sides or choice not in ("left", "right"):
            raise ValueError(f"bad answer: pair {pair_id!r}, choice {choice!r}")
        left, right = p.sides[pair_id]
        with self._transaction() as con:
            cur = con.execute(
                "INSERT OR IGNORE INTO answers (code, pair_id, position, left_image, right_image, choice, "
                "chosen_image, confidence, response_ms, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (code, pair_id, p.pair_order.index(pair_id) + 1, left, right, choice,
                 left if choice == "left" else right, confidence, response_ms, now()))
            return cur.rowcount == 1

    def answered(self, code: str) -> set[str]:
        """Pair ids this participant has answered."""
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT pair_id FROM answers WHERE code = ?", (code,))}

    # ------------------------------------------------------------------------------------------
    # Export

    def frames(self) -> dict[str, pd.DataFrame]:
        """All tables as DataFrames: participants, questions (long), answers."""
        with self._connect() as con:
            return {t: pd.read_sql_query(f"SELECT * FROM {t} ORDER BY rowid", con)
                    for t in ("participants", "questions", "answers")}

    def csv_exports(self) -> dict[str, str]:
        """participants/questions/answers as CSV text, with formula-like cells neutralised."""
        # Every text cell quoted: pandas leaves a bare CR unquoted, which splits the row for a reader.
        return {name: csv_safe(df).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC) for name, df in self.frames().items()}

    def export_csv(self, out_dir: str | Path) -> dict[str, Path]:
        """Write participants.csv, questions.csv and answers.csv (atomically) into out_dir."""
        out = {}
        for name, text in self.csv_exports().items():
            path = Path(out_dir) / f"{name}.csv"
            with atomic_path(path) as tmp:
                tmp.write_text(text, encoding="utf-8")
            out[name] = path
        return out

    # ------------------------------------------------------------------------------------------
    # Admin login

    def admin_lock(self, at: datetime | None = None) -> tuple[timedelta, int]:
        """(time left on the admin lock, failures in a row) at `at` (default now)."""
        with self._connect() as con:
            return self._lock_state(con, at or datetime.now(timezone.utc))

    @staticmethod
    def _lock_state(con: sqlite3.Connection, at: datetime) -> tuple[timedelta, int]:
        since = (at - LOCK_WINDOW).isoformat(timespec="milliseconds")
        last_ok = con.execute("SELECT MAX(at) FROM admin_attempts WHERE outcome = 'ok'").fetchone()[0]
        rows = con.execute("SELECT at FROM admin_attempts WHERE outcome = 'failed' AND at > ? AND at > ? ORDER BY at",
                           (since, last_ok or "")).fetchall()
        if len(rows) < LOCK_AFTER:
            return timedelta(0), len(rows)
        until = datetime.fromisoformat(rows[-1][0]) + lock_duration(len(rows))
        return max(until - at, timedelta(0)), len(rows)

    def admin_login(self, check, at: datetime | None = None) -> tuple[str, timedelta]:
        """Run `check()` (the password comparison) unless locked; log the attempt; return (outcome, lock left).

        One write transaction around check-and-log, so parallel sessions cannot squeeze extra
        guesses in between the lock test and the logging of a failure.
        """
        with self._transaction() as con:
            at = at or datetime.now(timezone.utc)  # taken under the write lock: attempts are logged in time order
            left, _ = self._lock_state(con, at)
            if left > timedelta(0):
                outcome = "locked"
            else:
                outcome = "ok" if check() else "failed"
            con.execute("INSERT INTO admin_attempts (at, outcome) VALUES (?, ?)",
                        (at.isoformat(timespec="milliseconds"), outcome))
            if outcome == "failed":
                left, _ = self._lock_state(con, at)
        return outcome, left

    def admin_attempts(self) -> pd.DataFrame:
        """The login log: time and outcome of every admin login attempt."""
        with self._connect() as con:
            return pd.read_sql_query("SELECT at, outcome FROM admin_attempts ORDER BY rowid", con)
